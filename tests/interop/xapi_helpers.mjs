// Helpers the Xen Orchestra `xen-api` interop scripts share.

import { createClient } from 'xen-api'

// A client logged in to URL; `opts` as createClient takes them (transport, watchEvents).
export async function connect([url, user, password], opts = {}) {
  const xapi = createClient({ url, auth: { user, password }, allowUnauthorized: true, ...opts })
  await xapi.connect()
  return xapi
}

// The first non-template VM (by name) with a disk: [name, VM ref, VDI ref].
export async function pickVm(xapi) {
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

// The copy of `vdi` inside snapshot VM `snapVm`.
export async function snapshotVdi(xapi, snapVm, vdi) {
  for (const vbd of await xapi.call('VM.get_VBDs', snapVm)) {
    const d = await xapi.call('VBD.get_VDI', vbd)
    if (d !== 'OpaqueRef:NULL' && (await xapi.call('VDI.get_snapshot_of', d)) === vdi) return d
  }
  throw new Error('snapshot has no copy of the disk')
}

// Writes `n` bytes of a pattern seeded by `seed` at `off` (simulator-only sim.write).
export async function guestWrite(xapi, vdi, off, n, seed = 1) {
  const data = Buffer.alloc(n)
  for (let i = 0; i < n; i++) data[i] = ((i + seed) % 251) + 1
  await xapi.call('sim.write', vdi, String(off), data.toString('base64'))
}
