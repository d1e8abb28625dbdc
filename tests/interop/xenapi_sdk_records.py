#!/usr/bin/env python3
"""Records through the official XenAPI Python SDK (XML-RPC) against xapi's datamodel.

Usage: xenapi_sdk_records.py URL USER PASSWORD FIELDS_TSV

FIELDS_TSV is crates/sim/datamodel/fields.tsv (class, field, kind, default), derived
from xapi's doc/data/xenapi.json. For every class whose get_all_records
system.listMethods names, every record must have exactly the datamodel's fields, each
with the Python type XML-RPC gives its kind (int64 as a string, as xapi sends it).
event.from's valid_ref_counts must be ints (XML-RPC <i4>). Prints a JSON report;
exits 1 on a mismatch.
"""

import json
import sys
import xmlrpc.client

import XenAPI

TYPES = {
    "string": str,
    "enum": str,
    "ref": str,
    "int": str,
    "float": float,
    "bool": bool,
    "datetime": xmlrpc.client.DateTime,
    "set": list,
    "int_set": list,
    "map": dict,
}


def datamodel(path):
    classes = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            cls, field, kind, _ = line.rstrip("\n").split("\t")
            classes.setdefault(cls, {})[field] = kind
    return classes


def main():
    url, user, password, table = sys.argv[1:5]
    fields = datamodel(table)
    s = XenAPI.Session(url, ignore_ssl=True)
    s.xenapi.login_with_password(user, password, "2.21", "xenvault-interop")
    problems = []
    checked = {}
    try:
        # xapi answers listMethods with a bare list, outside the status struct.
        methods = s.system.listMethods()
        classes = sorted(m.split(".")[0] for m in methods if m.endswith(".get_all_records"))
        for cls in classes:
            want = fields.get(cls)
            if want is None:
                problems.append("%s: not a datamodel class" % cls)
                continue
            records = getattr(s.xenapi, cls).get_all_records()
            checked[cls] = len(records)
            for ref, rec in records.items():
                missing, extra = sorted(set(want) - set(rec)), sorted(set(rec) - set(want))
                if missing or extra:
                    problems.append("%s %s: missing %s, extra %s" % (cls, ref, missing, extra))
                for name, value in rec.items():
                    kind = want.get(name)
                    if kind and not isinstance(value, TYPES[kind]):
                        problems.append("%s.%s: %s is %s, not %s" % (cls, name, kind, type(value).__name__, TYPES[kind].__name__))
        counts = getattr(s.xenapi.event, "from")(["vm"], "", 0.0)["valid_ref_counts"]
        if not counts or not all(type(n) is int for n in counts.values()):
            problems.append("valid_ref_counts not ints: %r" % counts)
    finally:
        s.xenapi.session.logout()
    problems = sorted(set(problems))
    print(json.dumps({"classes": checked, "problems": problems[:50], "problem_count": len(problems)}))
    sys.exit(1 if problems or len(checked) < 15 else 0)


main()
