// Stand-in for @vates/stream-reader (absent from the registry); only vhd-lib's stream validator uses it.
module.exports = class StreamReader {
  constructor() {
    throw new Error('@vates/stream-reader is a stub in xenvault interop tests')
  }
}
