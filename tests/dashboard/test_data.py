"""Page data against a real DuckDB store (and the same rows as a Parquet archive)."""

import pytest

from tests.dashboard import dash_builder as B
from dashboards import data


@pytest.fixture(scope="module")
def con(store_db):
    c = data.open_store(db=store_db)
    yield c
    c.close()


def test_overview_counts_and_nodes(con):
    o = data.overview(con)
    assert o["totals"]["jobs"] == 12 and o["totals"]["nodes"] == 5
    assert o["totals"]["failed_hooks"] == 2  # job 1002's prolog, job 1006's epilog
    assert sum(o["runs_over_time"]["runs"]) == o["totals"]["hook_runs"]
    assert sum(o["runs_over_time"]["failures"]) == 2
    assert {r["context"] for r in o["latency"]} == {"prolog_slurmctld", "prolog_slurmd", "epilog_slurmd",
                                                    "epilog_slurmctld"}
    assert o["slowest_scripts"][0]["path"] == "/etc/slurm/epilog.d/10-kill-strays.sh"  # the timeout
    assert {r["path"] for r in o["failing_scripts"]} == {"/etc/slurm/epilog.d/10-kill-strays.sh",
                                                        "/etc/slurm/prolog.d/20-check-gpu.sh"}
    groups = {p["nodes"][0]: p for p in o["problems"]}
    # node004's epilog timeout was followed by good hooks: not listed.  node003's
    # failed prolog was followed by a good epilog, so it is listed as drained
    # (node event) and why still finds the prolog failure behind the drain.
    assert list(groups) == ["node003"]
    g = groups["node003"]
    assert g["kind"] == "event" and g["state"] == "DRAIN" and g["reason"] == "Prolog error"
    assert g["verdict_node"] == "node003" and "20-check-gpu.sh" in (g["verdict"] or "")


def test_overview_asks_why_once_per_drain_group(con, monkeypatch):
    """One broken script on many nodes is one row and one why() call, not one per node."""
    calls = []
    groups = [{"context": "prolog_slurmd", "script": f"/s{k}.sh", "sha256": "ab" * 32, "count": 40,
               "nodes": [f"n{k}-{i:03d}" for i in range(40)], "failures": ["exit 1"]} for k in range(8)]
    monkeypatch.setattr(data, "drain_groups", lambda *a, **k: groups)
    monkeypatch.setattr(data, "why_node", lambda c, node, **k: calls.append(node) or {"verdict": f"{node}: broken"})
    o = data.overview(con)
    hook_rows = [p for p in o["problems"] if p["kind"] == "hook"]
    assert len(hook_rows) == data.MAX_GROUPS and all(len(p["nodes"]) == 40 for p in hook_rows)
    assert len(calls) <= data.MAX_GROUPS + data.MAX_EVENT_VERDICTS
    assert all(p["verdict"] == f"{p['verdict_node']}: broken" for p in hook_rows)


def test_job_has_every_hook_and_gpu(con):
    j = data.job(con, "1001")
    assert {(h["node"], h["context"]) for h in j["hooks"]} == {
        ("ctl01", "prolog_slurmctld"), ("node001", "prolog_slurmd"), ("node002", "prolog_slurmd"),
        ("node001", "epilog_slurmd"), ("node002", "epilog_slurmd"), ("ctl01", "epilog_slurmctld")}
    assert j["meta"]["job_name"] == "train-llm" and j["meta"]["user_name"] == "alice"
    gpus = j["gpu"]["gpus"]
    assert len(gpus) == sum(B.GPUS.values()) == 12
    for col in data.GPU_METRICS:
        assert len(j["gpu"]["metrics"][col]) == 12
        assert all(len(s) == len(j["gpu"]["t"]) for s in j["gpu"]["metrics"][col])
    kinds = {(m["node"], m["gpu_index"], m["kind"]) for m in j["gpu"]["markers"]}
    assert kinds == {("node001", 3, "xid"), ("node001", 5, "ecc")}
    util = j["gpu"]["metrics"]["utilization"][0]
    assert 50 <= min(v for v in util if v is not None) and max(util) <= 100  # shown as percent


def test_unknown_or_hostile_keys_are_not_found(con):
    for bad in ("4242", "1001' OR '1'='1", "1001; DROP TABLE hook_runs"):
        with pytest.raises(data.NotFound):
            data.job(con, bad)
    with pytest.raises(data.NotFound):
        data.node(con, "node999")
    with pytest.raises(data.NotFound):
        data.script(con, "/nope.sh")
    with pytest.raises(data.BadRequest):
        data.script(con, "")
    assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] > 0


def test_script_versions_and_drift(con):
    s = data.script(con, "/etc/slurm/prolog.d/10-mounts.sh")
    assert {v["sha256"] for v in s["versions"]} == {B.SHA["/etc/slurm/prolog.d/10-mounts.sh"], B.OLD_MOUNTS_SHA}
    assert [r["node"] for r in s["nodes_different"]] == ["node004"]
    assert s["majority_sha256"] == B.SHA["/etc/slurm/prolog.d/10-mounts.sh"]
    assert sum(map(sum, s["versions_over_time"]["counts"])) == sum(v["runs"] for v in s["versions"])
    f = data.script(con, "/etc/slurm/prolog.d/20-check-gpu.sh")
    assert f["failures"][0]["output"].startswith("GPU check failed: " + B.XSS)


def test_node_page_why_and_events(con):
    n = data.node(con, "node003")
    assert n["events"][0]["state"] == "DRAIN"
    assert n["why"] and "20-check-gpu.sh" in n["why"]["verdict"]
    assert n["failures"][0]["script"] == "/etc/slurm/prolog.d/20-check-gpu.sh"
    g = data.node(con, "node001")["gpu"]
    assert len(g["gpus"]) == 8


def test_search(con):
    s = data.search(con, "node00")
    assert [n["node"] for n in s["nodes"]] == ["node001", "node002", "node003", "node004"]
    assert data.search(con, "train")["jobs"][0]["job_id"] == "1001"
    assert data.search(con, "%")["scripts"] == []  # no LIKE wildcards: '%' is literal
    assert data.search(con, "check-gpu")["scripts"][0]["path"] == "/etc/slurm/prolog.d/20-check-gpu.sh"


def test_window_parameters(con):
    o = data.overview(con, since="2026-12-01T08:00Z", until="2026-12-01T09:00Z")
    assert o["totals"]["jobs"] == 1
    with pytest.raises(data.BadRequest, match="window is empty"):
        data.overview(con, since="2026-12-02", until="2026-12-01")


def test_archive_source_gives_the_same_pages(store_db, store_archive):
    """The Parquet archive (every file written twice) reads like the DuckDB file."""
    a, d = data.open_store(archive=store_archive), data.open_store(db=store_db)
    try:
        assert data.overview(a) == data.overview(d)
        assert data.job(a, "1001")["gpu"] == data.job(d, "1001")["gpu"]
    finally:
        a.close()
        d.close()


def test_missing_store_names_the_file(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(data.StoreUnavailable, match="nope.duckdb"):
        data.open_store(db=str(missing))


def test_summary_paragraph(con):
    text = data.summary_text(data.summary(con), url="http://127.0.0.1:8765/")
    assert text.startswith("12 jobs ran 54 hook runs (2 failed).")
    assert "node003" in text and "http://127.0.0.1:8765/" in text


def test_queries_library_is_the_real_package():
    """Guards the sys.path set-up: tests/queries must not shadow the package."""
    import queries.why

    assert data.why_node is queries.why.why
