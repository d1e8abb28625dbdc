// Changed-block tracking through Xen Orchestra's `xen-api` client, forced to JSON-RPC.
//
// Usage: node xen_api_cbt.mjs URL USER PASSWORD
//
// The same steps as xenapi_sdk_cbt.py (enable CBT, snapshot, sim.write, snapshot,
// VDI.data_destroy, VDI.list_changed_blocks); prints a JSON report, exits 1 on a mismatch.

import { connect, guestWrite, pickVm, snapshotVdi } from './xapi_helpers.mjs'

const BLOCK = 64 * 1024

const writesFor = size => [
  [0, 4096],
  [3 * BLOCK + 100, BLOCK],
  [10 * BLOCK - 1, 2],
  [size - 512, 512],
]

function blocksOf(writes) {
  const set = new Set()
  for (const [off, n] of writes) {
    for (let b = Math.floor(off / BLOCK); b <= Math.floor((off + n - 1) / BLOCK); b++) set.add(b)
  }
  return [...set].sort((a, b) => a - b)
}

function decodeBitmap(b64) {
  const bitmap = Buffer.from(b64, 'base64')
  const blocks = []
  for (let i = 0; i < bitmap.length; i++) {
    for (let bit = 0; bit < 8; bit++) if (bitmap[i] & (0x80 >> bit)) blocks.push(i * 8 + bit)
  }
  return blocks
}

const xapi = await connect(process.argv.slice(2), { transport: 'json-rpc', watchEvents: false })
let failed = false
try {
  const [name, vm, vdi] = await pickVm(xapi)
  await xapi.call('VDI.enable_cbt', vdi)
  if ((await xapi.call('VDI.get_cbt_enabled', vdi)) !== true) throw new Error('CBT not enabled')
  const size = Number(await xapi.call('VDI.get_virtual_size', vdi))
  const base = await snapshotVdi(xapi, await xapi.call('VM.snapshot', vm, 'interop-base'), vdi)
  const writes = writesFor(size)
  for (const [off, n] of writes) await guestWrite(xapi, vdi, off, n, 0)
  const incr = await snapshotVdi(xapi, await xapi.call('VM.snapshot', vm, 'interop-incr'), vdi)
  // xapi refuses data_destroy while a VBD (here the snapshot VM's) still uses the VDI.
  for (const vbd of await xapi.call('VDI.get_VBDs', base)) await xapi.call('VBD.destroy', vbd)
  await xapi.call('VDI.data_destroy', base)
  const baseType = await xapi.call('VDI.get_type', base)
  const bitmap = await xapi.call('VDI.list_changed_blocks', base, incr)
  const changed = decodeBitmap(bitmap)
  const expected = blocksOf(writes)
  console.log(
    JSON.stringify({
      vm: name,
      virtual_size: size,
      virtual_size_type: typeof (await xapi.call('VDI.get_virtual_size', vdi)),
      bitmap,
      bitmap_bits: Buffer.from(bitmap, 'base64').length * 8,
      changed,
      expected,
      base_type: baseType,
    })
  )
  failed = JSON.stringify(changed) !== JSON.stringify(expected) || baseType !== 'cbt_metadata'
} finally {
  await xapi.disconnect()
}
process.exit(failed ? 1 : 0)
