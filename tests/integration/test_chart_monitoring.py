# SPDX-License-Identifier: Apache-2.0
"""The chart's Grafana dashboard and Prometheus alerting rules
(charts/shunt/files/, templates/monitoring.yaml), rendered by `helm template`:
the dashboard ConfigMap carries the file unchanged with the label Grafana's
sidecar looks for; the PrometheusRule (behind monitoring.prometheusRule.enabled)
carries the rules file's groups, which `promtool check rules` accepts as
rendered; both follow their namespace and label values; the values schema
refuses bad ones. `promtool test rules` runs the alerts' unit tests
(tests/prometheus/rules_test.yaml). The dashboard's own shape is checked here (every panel
has a query, ids unique, only defined variables); its queries and the
alerts are evaluated against real data in test_golden_metrics.py."""

import json
import os
import re

import yaml

import k8schart as kc
import shuntlib as sl

FILES = os.path.join(kc.CHART, "files")
DASHBOARD = os.path.join(FILES, "grafana-dashboard.json")
RULES = os.path.join(FILES, "prometheus-rules.yaml")


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def test_default_dashboard_no_rule():
    objs = kc.render({})
    cm = kc.one(objs, "ConfigMap", "shunt-grafana-dashboard", "shunt-system")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["shunt-mesh.json"]) == load_dashboard()
    assert not kc.find(objs, "PrometheusRule")
    assert kc.validate([cm]) == {}


def test_rule_and_overrides():
    objs = kc.render({"monitoring": {
        "grafanaDashboard": {"namespace": "grafana", "labels": {"dashboards": "shunt"},
                             "annotations": {"grafana_folder": "Mesh"}},
        "prometheusRule": {"enabled": True, "namespace": "monitoring",
                           "labels": {"release": "kube-prometheus-stack"}}}})  # fmt: skip
    cm = kc.one(objs, "ConfigMap", "shunt-grafana-dashboard", "grafana")
    assert cm["metadata"]["labels"]["dashboards"] == "shunt"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # helm merges maps
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Mesh"}
    rule = kc.one(objs, "PrometheusRule", "shunt", "monitoring")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    with open(RULES) as f:
        assert rule["spec"] == yaml.safe_load(f)
    # As the operator hands them to Prometheus: a rule file of the spec.
    path = os.path.join(sl.tmpdir(), "rendered-rules.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(rule["spec"], f)
    sl.require_tool("promtool", "prometheus")
    r = sl.run(["promtool", "check", "rules", path], check=False)
    assert r.returncode == 0 and "SUCCESS: 11 rules found" in r.stdout, r.stdout + r.stderr
    alerts = {x["alert"] for g in rule["spec"]["groups"] for x in g["rules"]}
    assert {"ShuntHighErrorRate", "ShuntHighLatencyP99", "ShuntCertificateExpiringSoon",
            "ShuntEndpointsAllUnhealthy", "ShuntCircuitBreakerOpen", "ShuntMetricsSeriesOverflow",
            "ShuntLoadShed"} <= alerts, alerts  # fmt: skip
    # The annotations' templates are Prometheus's, not Helm's: kept as written.
    assert "{{ $labels.destination_service }}" in json.dumps(rule["spec"])


def test_rules_promtool():
    """promtool check rules on the file, and each alert's unit tests."""
    sl.require_tool("promtool", "prometheus")
    r = sl.run(["promtool", "check", "rules", RULES], check=False)
    assert r.returncode == 0 and "SUCCESS: 11 rules found" in r.stdout, r.stdout + r.stderr
    tests = os.path.join(sl.SOURCE, "tests", "prometheus")
    r = sl.run(["promtool", "test", "rules", "rules_test.yaml"], check=False, cwd=tests)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    with open(os.path.join(tests, "rules_test.yaml")) as f:
        tested = {t["alertname"] for case in yaml.safe_load(f)["tests"]
                  for t in case["alert_rule_test"]}  # fmt: skip
    with open(RULES) as f:
        alerts = {x["alert"] for g in yaml.safe_load(f)["groups"] for x in g["rules"]}
    assert tested == alerts, alerts ^ tested


def test_both_off():
    objs = kc.render({"monitoring": {"grafanaDashboard": {"enabled": False}}})
    assert not kc.find(objs, "ConfigMap", "shunt-grafana-dashboard")
    assert not kc.find(objs, "PrometheusRule")


def test_values_schema_refuses():
    for values, expect in (
        ({"monitoring": {"prometheusRule": {"enabled": "yes"}}}, "enabled"),
        ({"monitoring": {"grafanaDashboard": {"namespace": "Grafana"}}}, "namespace"),
        ({"monitoring": {"grafanaDashboard": {"labels": {"a": 1}}}}, "labels"),
        ({"monitoring": {"alerts": True}}, "alerts"),
    ):
        assert expect in kc.render_error(values), values


def test_dashboard_shape():
    d = load_dashboard()
    assert d["uid"] == "shunt-mesh" and d["title"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert names == {"datasource", "namespace", "service", "direction"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = set()
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        titles.add(p["title"])
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used <= names, (p["title"], used)
    for want in ("Success rate (not 5xx)", "Request rate", "Latency p50", "Latency p95",
                 "Latency p99", "TCP bytes", "TCP connections",
                 "mTLS share of requests and TCP connections", "Certificate expiry",
                 "Endpoint health (registry)", "Circuit breakers: endpoints per state",
                 "Shed and dropped"):  # fmt: skip
        assert want in titles, want
