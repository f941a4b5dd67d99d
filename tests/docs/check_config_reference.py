#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""docs/configuration.md must be what `shuntd --print-config-reference` prints,
and name the same flags and environment variables as `shuntd --help`: the
manual is generated from the config table and cannot drift from the daemon.

usage: check_config_reference.py SHUNTD DOCS/configuration.md
Prints one line and exits 1 on the first disagreement."""
import re
import subprocess
import sys

REGEN = "regenerate: shuntd --print-config-reference > docs/configuration.md"


def run(shuntd, arg):
    p = subprocess.run([shuntd, arg], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        sys.exit(f"shuntd {arg} exited {p.returncode}: {p.stderr.strip()[:200]}")
    return p.stdout


def fail(msg):
    print(msg)
    sys.exit(1)


def main():
    shuntd, path = sys.argv[1], sys.argv[2]
    generated = run(shuntd, "--print-config-reference")
    with open(path, encoding="utf-8") as f:
        checked_in = f.read()
    if generated != checked_in:
        g, c = generated.splitlines(), checked_in.splitlines()
        for n in range(max(len(g), len(c))):
            gl = g[n] if n < len(g) else "<end of output>"
            cl = c[n] if n < len(c) else "<end of file>"
            if gl != cl:
                fail(f"{path}:{n + 1}: file says {cl!r}, shuntd says {gl!r} ({REGEN})")
        fail(f"{path}: differs from shuntd only in line endings ({REGEN})")

    helptext = run(shuntd, "--help")
    help_flags = set(re.findall(r"^  --([a-z0-9][a-z0-9.-]*)", helptext, re.M)) - {"config"}
    help_env = set(re.findall(r"; env ([A-Z0-9_]+)", helptext))
    doc_flags = set(re.findall(r"^- flag: `--([a-z0-9][a-z0-9.-]*)", checked_in, re.M))
    doc_env = set(re.findall(r"^- environment: `([A-Z0-9_]+)`", checked_in, re.M))
    if not help_flags or not help_env:
        fail("shuntd --help lists no flags or environment variables: its format changed")
    for what, doc, hlp in (("flag", doc_flags, help_flags), ("env", doc_env, help_env)):
        if doc != hlp:
            only_doc = sorted(doc - hlp)
            only_help = sorted(hlp - doc)
            fail(f"{what}s differ: only in {path}: {only_doc}; only in shuntd --help: {only_help}")
    print(f"ok: {len(doc_flags)} flags, {len(doc_env)} environment variables agree")


if __name__ == "__main__":
    main()
