// Changed-block tracking through Xen Orchestra's `xen-api` client, forced to JSON-RPC.
//
// Usage: node xen_api_cbt.mjs URL USER PASSWORD
//
// The same steps as xenapi_sdk_cbt.py (enable CBT, snapshot, sim.write, snapshot,
// VDI.data_destroy, VDI.list_changed_blocks); prints a JSON report, exits 1 on a mismatch.

import { createClient } from 'xen-api'

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

async function pickVm(xapi) {
  const candidates = []
  for (const [ref, vm] of Object.entries(await xapi.call('VM.get_all_records'))) {
    if (vm.is_a_template || vm.is_a_snapshot || vm.is_control_domain) continue
    for (const vbd of vm.VBDs) {
      const rec = await xapi.call('VBD.get_record', vbd)
      if (rec.type === 'Disk' && rec.VDI !== 'OpaqueRef:NULL') {
        candidates.push([vm.name_label, ref, rec.VDI])
        break
      }
    }
  }
  if (candidates.length === 0) throw new Error('no VM with a disk')
  candidates.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  return candidates[0]
}

async function snapshotVdi(xapi, snapVm, vdi) {
  for (const vbd of await xapi.call('VM.get_VBDs', snapVm)) {
    const d = await xapi.call('VBD.get_VDI', vbd)
    if (d !== 'OpaqueRef:NULL' && (await xapi.call('VDI.get_snapshot_of', d)) === vdi) return d
  }
  throw new Error('snapshot has no copy of the disk')
}

const [url, user, password] = process.argv.slice(2)
const xapi = createClient({
  url,
  auth: { user, password },
  allowUnauthorized: true,
  transport: 'json-rpc',
  watchEvents: false,
})
await xapi.connect()
let failed = false
try {
  const [name, vm, vdi] = await pickVm(xapi)
  await xapi.call('VDI.enable_cbt', vdi)
  if ((await xapi.call('VDI.get_cbt_enabled', vdi)) !== true) throw new Error('CBT not enabled')
  const size = Number(await xapi.call('VDI.get_virtual_size', vdi))
  const base = await snapshotVdi(xapi, await xapi.call('VM.snapshot', vm, 'interop-base'), vdi)
  const writes = writesFor(size)
  for (const [off, n] of writes) {
    const data = Buffer.alloc(n)
    for (let i = 0; i < n; i++) data[i] = (i % 251) + 1
    await xapi.call('sim.write', vdi, String(off), data.toString('base64'))
  }
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
