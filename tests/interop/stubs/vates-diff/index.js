// Stand-in for @vates/diff (absent from the registry); only vhd-lib's stream validator uses it.
module.exports = function diff() {
  throw new Error('@vates/diff is a stub in xenvault interop tests')
}
