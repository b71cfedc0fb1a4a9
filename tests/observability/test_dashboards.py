"""Grafana provisioning: static checks of every dashboard, every panel query valid PromQL
against a real Prometheus, and (with the full stack's ``observed_stack`` fixture) every
panel showing data and every scrape target up."""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest
import yaml

from taxi_mlops import paths

GRAFANA = paths.PROJECT_ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
EXPECTED = {"overview", "serving", "streaming", "models"}
# What Grafana substitutes: $__rate_interval >= 4 x scrape interval (5s); the step of a
# 30-minute panel is ~15s.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "30m"}


def _load(path):
    return json.loads(path.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep theirs inside
    return [p for p in out if p["type"] != "row"]


def _datasource_uids() -> dict[str, str]:
    cfg = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    return {d["uid"]: d["type"] for d in cfg["datasources"]}


def _queries() -> list[tuple[str, str, str, bool]]:
    """(dashboard, panel title, expr with macros and variables replaced, instant)."""
    out = []
    for path in DASHBOARDS:
        dash = _load(path)
        variables = [v["name"] for v in dash.get("templating", {}).get("list", [])]
        for panel in _panels(dash):
            for target in panel["targets"]:
                expr = target["expr"]
                for macro, value in MACROS.items():
                    expr = expr.replace(macro, value)
                for name in variables:  # "All" = the variable's allValue
                    expr = re.sub(rf"\$\{{?{name}\}}?\b", ".*", expr)
                out.append((path.stem, panel["title"], expr, bool(target.get("instant"))))
    return out


def _variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, metric, label) of every ``label_values(metric, label)`` variable."""
    out = []
    for path in DASHBOARDS:
        for v in _load(path).get("templating", {}).get("list", []):
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", v["query"]["query"])
            assert m, f"{path.name}: variable {v['name']} is not label_values(metric, label)"
            out.append((path.stem, v["name"], m.group(1), m.group(2)))
    return out


# ---- static --------------------------------------------------------------------------------
def test_dashboards_load_with_unique_uids_and_valid_panels():
    assert {p.stem for p in DASHBOARDS} == EXPECTED
    datasources = _datasource_uids()
    assert datasources == {"prometheus": "prometheus", "loki": "loki"}
    assert _variable_queries()  # every variable is a label_values(metric, label) query
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)) and all(uids)
    for path in DASHBOARDS:
        dash = _load(path)
        assert dash["title"] and dash["schemaVersion"] >= 36
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
        for v in dash.get("templating", {}).get("list", []):
            assert v["datasource"]["uid"] in datasources
        for panel in _panels(dash):
            where = f"{path.name}: {panel['title']}"
            g = panel["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, where
            assert panel["datasource"]["uid"] in datasources, where
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            promql = [t for t in panel["targets"] if t.get("expr")]
            assert promql, f"{where}: no PromQL target"
            for t in panel["targets"]:
                uid = t["datasource"]["uid"]
                assert datasources.get(uid) == "prometheus", f"{where}: target datasource {uid}"
                if "rate(" in t["expr"] or "increase(" in t["expr"]:
                    assert "$__rate_interval" in t["expr"], f"{where}: rate window should be $__rate_interval"
                for ref in re.findall(r"\$\{?(\w+)", t["expr"]):
                    assert ref.startswith("__") or ref in variables, f"{where}: unknown variable ${ref}"


def test_provisioning_points_at_the_dashboards():
    cfg = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    provider = cfg["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_every_panel_query_is_valid_promql(monitoring_stack):
    """Prometheus itself parses every query (no data needed)."""
    settings, _ = monitoring_stack
    for dash, title, expr, _ in _queries():
        r = httpx.get(f"{settings.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", f"{dash}/{title}: {expr}\n{r.text}"


# ---- against the full stack ------------------------------------------------------------------
def _has_data(settings, expr: str, instant: bool) -> bool:
    """Like Grafana: instant panels query now, the others the dashboard's last 30 minutes."""
    if instant:
        r = httpx.get(f"{settings.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        series = [[s["value"]] for s in r.json()["data"]["result"]]
    else:
        end = time.time()
        r = httpx.get(f"{settings.prometheus_url}/api/v1/query_range",
                      params={"query": expr, "start": end - 1800, "end": end, "step": 15}, timeout=10)
        series = [s["values"] for s in r.json()["data"]["result"]]
    return any(not math.isnan(float(v)) for values in series for _, v in values)


def _variable_has_values(settings, metric: str, label: str) -> bool:
    r = httpx.get(f"{settings.prometheus_url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10)
    return bool(r.json()["data"])


@pytest.mark.slow
def test_every_panel_shows_data(observed_stack):
    settings = observed_stack
    pending: list = _queries() + [("variable", *v) for v in _variable_queries()]
    deadline = time.monotonic() + 90  # a few scrape + evaluation rounds, never a fixed sleep
    while pending and time.monotonic() < deadline:
        pending = [q for q in pending if not (_variable_has_values(settings, q[3], q[4]) if q[0] == "variable"
                                              else _has_data(settings, q[2], q[3]))]
        if pending:
            time.sleep(1.0)
    assert not pending, "panels (or variables) without data:\n" + "\n".join(f"  {q}" for q in pending)


@pytest.mark.slow
def test_every_target_is_up(observed_stack):
    from taxi_mlops.observability import prometheus

    settings = observed_stack
    expected = {job for job, _, _ in prometheus.scrape_targets(settings)}
    deadline = time.monotonic() + 60
    while True:
        targets = prometheus.targets_health(settings)
        down = [t for t in targets if t["health"] != "up"]
        if {t["job"] for t in targets} >= expected and not down:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"targets not up: {down or 'missing jobs ' + str(expected - {t['job'] for t in targets})}")
        time.sleep(1.0)


def test_pipeline_panels_show_data_from_the_pushgateway(monitoring_stack):
    """The Models dashboard's pipeline row against real pushed metrics (the full-stack test
    covers every panel; this one runs without the stack)."""
    from tests.observability.test_alert_path import _push_pipeline

    settings, _ = monitoring_stack
    _push_pipeline(settings, success=1)
    pipeline = [q for q in _queries() if q[0] == "models" and "pipeline" in q[2]]
    assert len(pipeline) == 5
    deadline = time.monotonic() + 20
    while pipeline and time.monotonic() < deadline:
        pipeline = [q for q in pipeline if not _has_data(settings, q[2], q[3])]
        if pipeline:
            time.sleep(0.5)
    assert not pipeline, pipeline


@pytest.mark.slow
def test_rules_evaluate_cleanly_and_the_accuracy_join_matches(observed_stack):
    """On real data: no rule evaluation errors (e.g. many-to-many joins), and the champion's
    live accuracy (label join) joins the eval accuracy (model server) on model_name and
    model_version, so TaxiLiveAccuracyBelowEval can fire at all."""
    settings = observed_stack
    deadline = time.monotonic() + 60
    while True:
        groups = httpx.get(f"{settings.prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = [r for r in rules if not r.get("lastEvaluation", "").startswith("0001")]
        bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
        if rules and len(evaluated) == len(rules) or bad or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(rules) >= 9 and not bad, bad
    assert len(evaluated) == len(rules), "some rules were never evaluated"
    join = ('taxi_live_accuracy{alias="champion"} - on (model_name, model_version) group_left () '
            'max by (model_name, model_version) (taxi_model_eval_accuracy)')
    result = httpx.get(f"{settings.prometheus_url}/api/v1/query", params={"query": join}, timeout=10).json()
    assert result["status"] == "success" and result["data"]["result"], \
        "taxi_live_accuracy{alias=champion} and taxi_model_eval_accuracy share no (model_name, model_version)"
