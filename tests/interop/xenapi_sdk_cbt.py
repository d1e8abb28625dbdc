#!/usr/bin/env python3
"""Changed-block tracking through the official XenAPI Python SDK (XML-RPC).

Usage: xenapi_sdk_cbt.py URL USER PASSWORD

Logs in, lists VMs, enables CBT on a disk, snapshots, writes with the simulator-only
sim.write, snapshots again, turns the first snapshot into CBT metadata (VBD.destroy of
its VBDs, then VDI.data_destroy)
and checks that VDI.list_changed_blocks decodes (one bit per 64 KiB block, most significant
bit first) to exactly the blocks written. Prints a JSON report; exits 1 on a mismatch.
"""

import base64
import json
import sys

import XenAPI

BLOCK = 64 * 1024


def writes_for(size):
    """(offset, length) guest writes: inside one block, across a block edge, the last sector."""
    return [(0, 4096), (3 * BLOCK + 100, BLOCK), (10 * BLOCK - 1, 2), (size - 512, 512)]


def blocks_of(writes):
    return sorted({b for off, n in writes for b in range(off // BLOCK, (off + n - 1) // BLOCK + 1)})


def decode_bitmap(b64):
    bitmap = base64.b64decode(b64)
    return [i * 8 + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte & (0x80 >> bit)]


def pick_vm(x):
    candidates = []
    for ref, vm in x.VM.get_all_records().items():
        if vm["is_a_template"] or vm["is_a_snapshot"] or vm["is_control_domain"]:
            continue
        for vbd in vm["VBDs"]:
            rec = x.VBD.get_record(vbd)
            if rec["type"] == "Disk" and rec["VDI"] != "OpaqueRef:NULL":
                candidates.append((vm["name_label"], ref, rec["VDI"]))
                break
    if not candidates:
        sys.exit("no VM with a disk")
    return min(candidates)


def snapshot_vdi(x, snap_vm, vdi):
    for vbd in x.VM.get_VBDs(snap_vm):
        d = x.VBD.get_VDI(vbd)
        if d != "OpaqueRef:NULL" and x.VDI.get_snapshot_of(d) == vdi:
            return d
    sys.exit("snapshot has no copy of the disk")


def main():
    url, user, password = sys.argv[1:4]
    session = XenAPI.Session(url, ignore_ssl=True)
    session.xenapi.login_with_password(user, password, "1.0", "xenvault-interop")
    x = session.xenapi
    try:
        name, vm, vdi = pick_vm(x)
        x.VDI.enable_cbt(vdi)
        assert x.VDI.get_cbt_enabled(vdi) is True
        size = int(x.VDI.get_virtual_size(vdi))
        base = snapshot_vdi(x, x.VM.snapshot(vm, "interop-base"), vdi)
        writes = writes_for(size)
        for off, n in writes:
            data = bytes((i % 251) + 1 for i in range(n))
            x.sim.write(vdi, str(off), base64.b64encode(data).decode())
        incr = snapshot_vdi(x, x.VM.snapshot(vm, "interop-incr"), vdi)
        # xapi refuses data_destroy while a VBD (here the snapshot VM's) still uses the VDI.
        for vbd in x.VDI.get_VBDs(base):
            x.VBD.destroy(vbd)
        x.VDI.data_destroy(base)
        base_type = x.VDI.get_type(base)
        bitmap = x.VDI.list_changed_blocks(base, incr)
        changed = decode_bitmap(bitmap)
        expected = blocks_of(writes)
        report = {
            "vm": name,
            "virtual_size": size,
            "bitmap": bitmap,
            "bitmap_bits": len(base64.b64decode(bitmap)) * 8,
            "changed": changed,
            "expected": expected,
            "base_type": base_type,
        }
        print(json.dumps(report))
        if changed != expected or base_type != "cbt_metadata":
            sys.exit(1)
    finally:
        session.xenapi.session.logout()


if __name__ == "__main__":
    main()
