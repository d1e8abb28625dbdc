#!/usr/bin/env python3
"""Derives fields.tsv (class, field, kind, default) and messages.tsv (class, message)
from xapi's datamodel.

Usage: generate.py XENAPI_JSON OUT_DIR

XENAPI_JSON is doc/data/xenapi.json of xapi-project/xen-api. Fields xapi removed are
left out (xapi no longer serves them). Each default is what xapi fills in when a
record is created without that field: the datamodel's default where it has one,
else the zero value of the type (the first value for an enum). Kinds: string, int,
float, bool, datetime, ref, enum, set, int_set, map; set items and map entries (k=v) are
comma-separated. messages.tsv lists every call xapi has (the implicit getters and
setters too), as `system.listMethods` names them. Classes with fields of other types (option, record) are call
results, not stored objects, and are left out.
"""

import json
import os
import re
import sys

NULL_REF = "OpaqueRef:NULL"


def kind_of(ty):
    if ty.endswith(" ref"):
        return "ref"
    if ty == "int set":
        return "int_set"
    if ty.endswith(" set"):
        return "set"
    if ty.endswith(" map"):
        return "map"
    if ty.startswith("enum "):
        return "enum"
    if ty in ("string", "int", "float", "bool", "datetime"):
        return ty
    return None


def default_of(field, kind, enums):
    text = field.get("default")
    if kind == "ref":
        # The datamodel prints a null ref as Null, {} or a placeholder ref.
        return NULL_REF
    if text is None:
        return {
            "string": "",
            "int": "0",
            "float": "0.0",
            "bool": "false",
            "datetime": "19700101T00:00:00Z",
            "enum": enums.get(field["type"][len("enum "):], [""])[0],
            "set": "",
            "int_set": "",
            "map": "",
        }[kind]
    if kind == "string":
        return json.loads(text)
    if kind == "float":
        return repr(float(text))
    if kind in ("set", "int_set"):
        return ",".join(i.strip() for i in text.strip("{}").split(",") if i.strip())
    if kind == "map":
        pairs = re.findall(r'"([^"]*)"\s*->\s*"([^"]*)"', text)
        return ",".join(f"{k}={v}" for k, v in pairs)
    return text


def fields_tsv(classes, enums, out):
    print("# class\tfield\tkind\tdefault (derived from xapi's doc/data/xenapi.json by generate.py)", file=out)
    for c in classes:
        fields = [f for f in c["fields"] if f["lifecycle"]["state"] != "Removed_s"]
        odd = [f["type"] for f in fields if kind_of(f["type"]) is None]
        if odd:
            # event, sr_stat, probe_result: call results, never stored objects.
            print(f"skipped {c['name']}: {', '.join(odd)}", file=sys.stderr)
            continue
        for f in fields:
            kind = kind_of(f["type"])
            value = default_of(f, kind, enums)
            assert "\t" not in value and "\n" not in value, (c["name"], f["name"])
            print(f"{c['name']}\t{f['name']}\t{kind}\t{value}", file=out)


def messages_tsv(classes, out):
    print("# class\tmessage (derived from xapi's doc/data/xenapi.json by generate.py)", file=out)
    for c in classes:
        for m in c["messages"]:
            if m["lifecycle"]["state"] != "Removed_s":
                print(f"{c['name']}\t{m['name']}", file=out)


def main():
    classes = json.load(open(sys.argv[1]))
    enums = {}
    for c in classes:
        for e in c.get("enums", []):
            enums[e["name"]] = [v["name"] for v in e["values"]]
    with open(os.path.join(sys.argv[2], "fields.tsv"), "w") as out:
        fields_tsv(classes, enums, out)
    with open(os.path.join(sys.argv[2], "messages.tsv"), "w") as out:
        messages_tsv(classes, out)


main()
