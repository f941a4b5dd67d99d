#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Every source file in git (C, headers, Python, shell, CMake, the
Containerfile, JavaScript) names its license in an SPDX line among its first
three lines: Apache-2.0, except the eBPF programs (bpf/*.bpf.c), which are
GPL-2.0 because the kernel requires a GPL-compatible license string, and
vmlinux/<arch>/vmlinux.h, the kernel's own types.

usage: check_spdx.py SOURCE_DIR
Prints one line per file that does not and exits 1 if there is any."""
import os
import subprocess
import sys

SOURCES = (".c", ".h", ".py", ".sh", ".cmake", ".mjs")
NAMES = ("CMakeLists.txt", "Containerfile")


def main():
    root = sys.argv[1]
    files = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    missing = []
    checked = 0
    for f in files:
        if f.startswith(("tests/fuzz/corpus/", "tests/mutations/")):
            continue
        if not (f.endswith(SOURCES) or os.path.basename(f) in NAMES):
            continue
        path = os.path.join(root, f)
        if not os.path.exists(path):  # deleted in the work tree, not yet in git
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = "".join(fh.readline() for _ in range(3))
        # vmlinux/<arch>/vmlinux.h: the kernel's types (GPL-2.0 WITH Linux-syscall-note).
        gpl = f.endswith(".bpf.c") or (f.startswith("vmlinux/") and f.endswith("/vmlinux.h"))
        want = "GPL-2.0" if gpl else "Apache-2.0"
        checked += 1
        if "SPDX-License-Identifier: " + want not in head:
            missing.append(f"{f}: no 'SPDX-License-Identifier: {want}' in its first three lines")
    print("\n".join(missing) or f"ok: {checked} source files carry their SPDX line")
    return 1 if missing else 0

if __name__ == "__main__":
    sys.exit(main())
