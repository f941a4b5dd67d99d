# SPDX-License-Identifier: Apache-2.0
"""The documentation agrees with a running shuntd: every metric family a
shuntd with iptables capture serves (shunt_* and process_*) is in
docs/metrics.md's "Families" table,
and every family that table lists is served (the eBPF and shunt-ca tables
below it are not checked here: they need those modes)."""

import os
import re

import shuntlib as sl


def documented_families():
    with open(os.path.join(sl.SOURCE, "docs", "metrics.md")) as f:
        text = f.read()
    section = text.split("\n## Families\n", 1)[1]
    table = section.split("\n\n| metric |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `((?:shunt|process)_[a-z0-9_]+)` \|", "| metric |" + table, re.M))


def test_metrics_reference_matches_shuntd(fresh_topo, start_shuntd):
    d = start_shuntd(fresh_topo.app)
    served = set(re.findall(r"^# TYPE (\S+) ", d.metrics_text(), re.M))
    documented = documented_families()
    assert documented, "docs/metrics.md has no Families table"
    assert served - documented == set(), "served by shuntd but not in docs/metrics.md"
    assert documented - served == set(), "in docs/metrics.md's Families table but not served"
