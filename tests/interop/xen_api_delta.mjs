// Xen Orchestra's own code against a XenAPI host: its `xen-api` client (with event
// watching, as XO runs it, and its XML-RPC transport, which posts to /xmlrpc) snapshots
// a VM, exports disks and the VM through its getResource (paths with and without a
// trailing slash), imports through putResource, and `vhd-lib` rebuilds the newer
// snapshot from a full VHD and a delta VHD (chainVhd + VhdSynthetic).
//
// Usage: node xen_api_delta.mjs URL USER PASSWORD
// Prints a JSON report; exits 1 when a check fails.

import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getHandler } from '@xen-orchestra/fs'
import { chainVhd, VhdSynthetic } from 'vhd-lib'
import { connect, guestWrite, pickVm, snapshotVdi } from './xapi_helpers.mjs'

const MiB = 1 << 20

async function download(xapi, path, query) {
  const response = await xapi.getResource(path, { query })
  const chunks = []
  for await (const chunk of response.body) chunks.push(chunk)
  return Buffer.concat(chunks)
}

const sha256 = data => createHash('sha256').update(data).digest('hex')

async function syntheticSha256(handler, path) {
  const hash = createHash('sha256')
  await VhdSynthetic.fromVhdChain(handler, path).then(async disposable => {
    try {
      const vhd = disposable.value
      await vhd.readBlockAllocationTable()
      for await (const chunk of vhd.rawContent()) hash.update(chunk)
    } finally {
      await disposable.dispose()
    }
  })
  return hash.digest('hex')
}

const args = process.argv.slice(2)
const xapi = await connect(args)
const xml = await connect(args, { transport: 'xml-rpc', watchEvents: false })
const dir = mkdtempSync(join(tmpdir(), 'xen-api-delta-'))
const report = { checks: {}, details: {} }
const check = (name, ok, detail) => {
  report.checks[name] = ok
  if (detail !== undefined) report.details[name] = detail
}
try {
  const [name, vm, vdi] = await pickVm(xapi)
  report.vm = name
  check('xml-rpc transport', (await xml.call('VM.get_name_label', vm)) === name)

  await guestWrite(xapi, vdi, 0, 3 * MiB, 1)
  const s1 = await xapi.call('VM.snapshot', vm, 'xo-base')
  const base = await snapshotVdi(xapi, s1, vdi)
  // Changes inside one 2 MiB block, across a block edge, and in the last sector.
  const size = Number(await xapi.call('VDI.get_virtual_size', vdi))
  await guestWrite(xapi, vdi, 4096, 8192, 2)
  await guestWrite(xapi, vdi, 2 * MiB - 100, 200, 3)
  await guestWrite(xapi, vdi, size - 512, 512, 4)
  const s2 = await xapi.call('VM.snapshot', vm, 'xo-incr')
  const incr = await snapshotVdi(xapi, s2, vdi)
  const want = await xapi.call('sim.sha256', incr)

  // A full VHD of the base (trailing slash) and a delta of the newer snapshot (none).
  const full = await download(xapi, '/export_raw_vdi/', { vdi: base, format: 'vhd' })
  const delta = await download(xapi, '/export_raw_vdi', { vdi: incr, format: 'vhd', base })
  writeFileSync(join(dir, 'base.vhd'), full)
  writeFileSync(join(dir, 'delta.vhd'), delta)
  report.full_vhd_bytes = full.length
  report.delta_vhd_bytes = delta.length
  // Headers, BAT and footer take 3 KiB; each block a bitmap sector and 2 MiB. Changed:
  // blocks 0 and 1 (the edge write) and the last one, whatever the base holds.
  const blocks = n => (n.length - 3 * 1024) / (512 + 2 * MiB)
  check('delta holds the 3 changed blocks', blocks(delta) === 3, blocks(delta))
  check('full holds the 2 written blocks', blocks(full) === 2, blocks(full))

  const handler = getHandler({ url: 'file://' + dir })
  await handler.sync()
  try {
    await chainVhd(handler, 'base.vhd', handler, 'delta.vhd', true)
    const rebuilt = await syntheticSha256(handler, 'delta.vhd')
    check('VhdSynthetic rebuilds the newer snapshot', rebuilt === want, { rebuilt, want })
  } finally {
    await handler.forget()
  }

  // The raw export with and without a trailing slash is the same disk.
  for (const path of ['/export_raw_vdi', '/export_raw_vdi/']) {
    const raw = await download(xapi, path, { vdi: incr, format: 'raw' })
    check(`raw ${path}`, sha256(raw) === want && raw.length === size, raw.length)
  }

  // The delta VHD put onto a clone of the base gives the newer snapshot.
  const copy = await xapi.call('VDI.clone', base, {})
  await xapi.putResource(readFileSync(join(dir, 'delta.vhd')), '/import_raw_vdi/', {
    query: { vdi: copy, format: 'vhd' },
  })
  check('delta imported onto the base', (await xapi.call('sim.sha256', copy)) === want)

  // The snapshot as an XVA through /export and /export/, imported through /import/.
  const sr = await xapi.call('VDI.get_SR', incr)
  for (const path of ['/export', '/export/']) {
    const xva = await download(xapi, path, { ref: s2, use_compression: 'false' })
    check(`xva ${path} starts with ova.xml`, xva.subarray(0, 7).toString() === 'ova.xml')
    const before = new Set(await xapi.call('VM.get_all'))
    await xapi.putResource(xva, '/import/', { query: { sr_id: sr } })
    const created = (await xapi.call('VM.get_all')).filter(r => !before.has(r))
    const rec = created.length === 1 ? await xapi.call('VM.get_record', created[0]) : {}
    check(`xva ${path} imports as a template, not a snapshot`, rec.is_a_template === true && rec.is_a_snapshot === false)
    const disks = []
    for (const vbd of rec.VBDs ?? []) {
      const d = await xapi.call('VBD.get_VDI', vbd)
      if (d !== 'OpaqueRef:NULL') disks.push(await xapi.call('sim.sha256', d))
    }
    check(`xva ${path} carries the disk`, disks.includes(want))
  }
} catch (error) {
  report.error = String(error?.stack ?? error)
} finally {
  await Promise.all([xapi.disconnect(), xml.disconnect()])
  rmSync(dir, { recursive: true, force: true })
}
const failed = report.error !== undefined || Object.values(report.checks).some(ok => ok !== true)
console.log(JSON.stringify(report))
process.exit(failed ? 1 : 0)
