#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""lint.layers: every #include "<component>/<header>" in userspace/ obeys the
layers declared in CMakeLists.txt (SHUNT_LAYERS, lowest first, and each
component's SHUNT_DEPS_<component>):

  - a component includes headers of itself and of the components it depends
    on (declared, or through them), which always come before it in the list;
    userspace/cmd/ is the top and may include any component;
  - a private header (a name ending in -int.h) is included only from its own
    component.

Prints one line per violation (file:line: what) and exits 1 if any."""
import os
import re
import sys


def read_layers(cmake):
    text = open(cmake, encoding="utf-8").read()
    m = re.search(r"set\(SHUNT_LAYERS ([^)]*)\)", text)
    if not m:
        sys.exit("lint.layers: no SHUNT_LAYERS in %s" % cmake)
    layers = m.group(1).split()
    deps = {c: set() for c in layers}
    for c, d in re.findall(r"set\(SHUNT_DEPS_(\w+) ([^)]*)\)", text):
        if c not in deps:
            sys.exit("lint.layers: SHUNT_DEPS_%s names no component of SHUNT_LAYERS" % c)
        deps[c] = set(d.split())
    for c in layers:
        for d in deps[c]:
            if d not in deps or layers.index(d) >= layers.index(c):
                sys.exit("lint.layers: CMakeLists.txt: %s depends on %s, which is not below it"
                         % (c, d))
    allowed = {}
    for c in layers:  # lowest first: each closure is complete when needed
        allowed[c] = {c}.union(*[allowed[d] for d in deps[c]])
    return layers, allowed


def main(root):
    layers, allowed = read_layers(os.path.join(root, "CMakeLists.txt"))
    userspace = os.path.join(root, "userspace")
    comps = sorted(d for d in os.listdir(userspace)
                   if os.path.isdir(os.path.join(userspace, d)))
    bad = []
    for comp in comps:
        if comp != "cmd" and comp not in allowed:
            bad.append("userspace/%s/: a component missing from SHUNT_LAYERS" % comp)
            continue
        ok = set(layers) if comp == "cmd" else allowed[comp]
        cdir = os.path.join(userspace, comp)
        for name in sorted(os.listdir(cdir)):
            if not name.endswith((".c", ".h")):
                continue
            rel = "userspace/%s/%s" % (comp, name)
            with open(os.path.join(cdir, name), encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    m = re.match(r'\s*#\s*include\s+"([a-z0-9_]+)/([^"]+)"', line)
                    if not m or m.group(1) not in comps:
                        continue
                    other, header = m.group(1), m.group(2)
                    if other != comp and header.endswith("-int.h"):
                        bad.append("%s:%d: includes %s/%s, a private header of %s"
                                   % (rel, n, other, header, other))
                    elif other not in ok:
                        bad.append("%s:%d: %s includes %s/%s: %s is not below it "
                                   "(CMakeLists.txt SHUNT_LAYERS / SHUNT_DEPS_%s)"
                                   % (rel, n, comp, other, header, other, comp))
    for b in bad:
        print(b)
    return 1 if bad else 0


def self_test():
    """The checker on small trees: a clean one passes, and each kind of
    violation is reported with its file and line."""
    import contextlib
    import io
    import tempfile

    def run(files):
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "CMakeLists.txt"), "w") as f:
                f.write("set(SHUNT_LAYERS core lb proxy)\nset(SHUNT_DEPS_lb core)\n"
                        "set(SHUNT_DEPS_proxy lb)\n")
            for path, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
                with open(os.path.join(root, path), "w") as f:
                    f.write(text)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main(root)
            return rc, out.getvalue()

    clean = {"userspace/core/a.h": "", "userspace/lb/lb-int.h": "",
             "userspace/lb/b.c": '#include "core/a.h"\n#include "lb/lb-int.h"\n',
             "userspace/proxy/p.c": '#include "core/a.h"\n#include "lb/b.h"\n',
             "userspace/cmd/m.c": '#include "proxy/p.h"\n'}
    cases = [
        ({}, 0, ""),
        ({"userspace/lb/up.c": '\n#include "proxy/p.h"\n'}, 1,
         "userspace/lb/up.c:2: lb includes proxy/p.h: proxy is not below it"),
        ({"userspace/proxy/x.c": '#include "lb/lb-int.h"\n'}, 1,
         "userspace/proxy/x.c:1: includes lb/lb-int.h, a private header of lb"),
        ({"userspace/tls/t.c": ""}, 1,
         "userspace/tls/: a component missing from SHUNT_LAYERS"),
    ]
    failed = 0
    for extra, want_rc, want in cases:
        rc, out = run(dict(clean, **extra))
        if rc != want_rc or want not in out or (not want and out):
            print("self-test: %r gave %d %r, expected %d %r" % (extra, rc, out, want_rc, want))
            failed = 1
    return failed


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else
                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")))
