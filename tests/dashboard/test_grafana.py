"""dashboards/grafana.json: every SQL panel runs on the real store schema, and every
Prometheus panel names a metric the collector really exports.  (No Grafana here:
this checks our half of the contract, not the plugin.)"""

import json
import re
from importlib import resources

import duckdb
import pytest


@pytest.fixture(scope="module")
def dash():
    return json.loads((resources.files("dashboards") / "grafana.json").read_text())


def _panels(dash):
    return [p for p in dash["panels"] if p["type"] != "row"]


def _expand(sql):
    """The Grafana SQL macros the panels use, as the DuckDB plugin would expand them."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 r"\1 BETWEEN TIMESTAMPTZ '2026-11-01 00:00:00+00' AND TIMESTAMPTZ '2026-12-31 00:00:00+00'", sql)
    return sql.replace("$__interval_ms", "60000").replace("$job", "1001")


def test_sql_panels_run_on_the_store(dash, store_db):
    con = duckdb.connect(store_db, read_only=True)
    try:
        queries = [t["rawSql"] for p in _panels(dash) for t in p["targets"] if "rawSql" in t]
        queries.append(dash["templating"]["list"][0]["query"])
        assert len(queries) >= 10
        for q in queries:
            assert "$" not in _expand(q), q
            rows = con.execute(_expand(q)).fetchall()
            assert rows, f"no rows on the test store for: {q}"
    finally:
        con.close()


def test_prometheus_panels_use_exported_metrics(dash):
    from collector.metrics import Metrics

    exported = Metrics().render()
    exprs = [t["expr"] for p in _panels(dash) for t in p["targets"] if "expr" in t]
    assert exprs
    for e in exprs:
        for name in re.findall(r"hookscope_[a-z_]+", e):
            assert re.search(rf"^{name}[{{ ]", exported, re.M), f"{name} is not exported by the collector"


def test_every_panel_has_a_datasource_input(dash):
    inputs = {f"${{{i['name']}}}" for i in dash["__inputs"]}
    for p in _panels(dash):
        assert p["datasource"]["uid"] in inputs and p["targets"]
