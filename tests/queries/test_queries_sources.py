"""The queries library against both sources: ONE abstract test class, run
against the DuckDB store and against the Parquet archive (eventsourcing style).
"""

import pytest
from tests.queries.queries_scenario import (CLEANUP, GPU, HANG, HEALTH, MOUNTS, NOEXEC, SCRATCH, SYSTEMIC_NODES, UNSAFE,
                      BASE_NODES)

from queries import QueryError
from queries.audit import audit_job, audit_node, audit_script, audit_user
from queries.drains import drains
from queries.source import open_source, parse_time
from queries.views import VIEWS
from queries.why import NoSuchNode, why

AUDIT_KEYS = {"node", "context", "script", "sha256", "exit_code", "signal", "timed_out", "start",
              "duration_ms", "user"}
WHY_KEYS = {"node", "verdict", "cause", "systemic", "regression", "gpu", "evidence"}
CAUSE_KEYS = {"context", "script", "sha256", "exit_code", "signal", "timed_out", "output", "job_id",
              "user", "time"}


class SourceContract:
    """Everything a source must answer identically.  Subclasses provide ``con``."""

    @pytest.fixture
    def con(self):
        raise NotImplementedError

    # ---------------------------------------------------------------- views
    def test_every_documented_view_runs(self, con):
        for name, _doc, _sql in VIEWS:
            con.execute(f"SELECT * FROM {name} LIMIT 1").fetchall()

    def test_rows_are_not_duplicated(self, con, scenario):
        # The archive holds every file twice; the views must dedupe.
        for table in ("hook_runs", "script_runs", "journal", "node_events", "gpu_samples"):
            n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert n == len(scenario.rows[table]), table

    # ---------------------------------------------------------------- audit
    def test_audit_job_controller_and_nodes_in_time_order(self, con):
        rows = audit_job(con, 1001)
        assert rows and AUDIT_KEYS <= set(rows[0])
        assert [r["start"] for r in rows] == sorted(r["start"] for r in rows)
        assert {(r["node"], r["context"]) for r in rows} == {
            ("n000", "prolog_slurmd"), ("n000", "epilog_slurmd"), ("ctl", "epilog_slurmctld")}
        assert [r["script"] for r in rows if r["context"] == "prolog_slurmd"] == [MOUNTS, GPU, SCRATCH]
        assert all(r["user"] == "alice" and r["start"].endswith("Z") for r in rows)
        assert all(r["exit_code"] == 0 and r["failed"] is False for r in rows)

    def test_audit_job_failure_details(self, con):
        rows = audit_job(con, 2003)
        hang = [r for r in rows if r["script"] == HANG]
        assert len(hang) == 1
        assert hang[0]["timed_out"] is True and hang[0]["signal"] == 9 and hang[0]["exit_code"] == 137
        assert hang[0]["duration_ms"] == pytest.approx(300000.0)
        assert hang[0]["status"] == 137 and hang[0]["failed"] is True

    def test_audit_job_runner_killed_and_unknown(self, con):
        rows = audit_job(con, 2012)
        assert rows[-1]["script"] == GPU and rows[-1]["runner_killed"] is True
        assert rows[-1]["exit_code"] is None and rows[-1]["failed"] is True
        assert audit_job(con, "no-such-job") == []

    def test_audit_node_and_window(self, con):
        rows = audit_node(con, "fail01")
        assert {r["job_id"] for r in rows} == {"2001", "2002"}
        since = "2026-11-02T12:00:00Z"
        later = audit_node(con, "fail01", since=since)
        assert {r["job_id"] for r in later} == {"2002"}
        assert all(parse_time(r["start"]) >= parse_time(since) for r in later)
        assert audit_node(con, "fail01", until=since) and \
            {r["job_id"] for r in audit_node(con, "fail01", until=since)} == {"2001"}

    def test_audit_user(self, con):
        rows = audit_user(con, "carol")
        assert {r["job_id"] for r in rows} == {"2002"}
        assert {r["user"] for r in rows} == {"carol"}
        with pytest.raises(QueryError):
            audit_user(con, "")

    def test_audit_script_versions_failure_rate_percentiles(self, con):
        d = audit_script(con, HEALTH)
        assert [v["sha256"][:6] for v in d["versions"]] and len(d["versions"]) == 2
        v1, v2 = d["versions"]
        assert v1["first_seen"] < v2["first_seen"] and v1["last_seen"] < v2["first_seen"]
        assert (v1["runs"], v1["failures"], v1["failure_rate"]) == (300, 0, 0.0)
        assert (v2["runs"], v2["failures"], v2["failure_rate"]) == (300, 300, 1.0)
        assert v1["n_nodes"] == 300 and v1["nodes"] == sorted(SYSTEMIC_NODES)
        assert d["runs"] == 600 and d["failures"] == 300

    def test_audit_script_drift(self, con):
        d = audit_script(con, GPU)
        drift = d["drift"]
        assert len(drift) == 1 and drift[0]["hour"].startswith("2026-11-02T11:00:00")
        nodes = sorted(tuple(v["nodes"]) for v in drift[0]["versions"])
        assert nodes == [tuple(BASE_NODES[:5]), tuple(BASE_NODES[5:])]
        hot = [v for v in d["versions"] if v["n_nodes"] == 5 and v["runs"] == 5]
        assert hot and hot[0]["p50_ms"] == pytest.approx(37.0) and hot[0]["p99_ms"] <= 39.0

    # ---------------------------------------------------------------- why
    def test_why_script_failure_node_fault(self, con):
        d = why(con, "fail01")
        assert WHY_KEYS <= set(d) and CAUSE_KEYS <= set(d["cause"])
        c = d["cause"]
        assert (c["script"], c["exit_code"], c["job_id"], c["user"]) == (SCRATCH, 3, "2002", "carol")
        assert c["context"] == "prolog_slurmd" and "permission denied" in c["output"]
        assert c["time"].startswith("2026-11-02T13:00:00")
        assert d["systemic"]["fault"] == "node" and d["systemic"]["ok_nodes"] >= 10
        assert SCRATCH in d["verdict"] and "exited 3" in d["verdict"] and "Prolog error" in d["verdict"]
        assert d["regression"]["changed"] is False
        kinds = [e.get("kind") for e in d["evidence"] if e["table"] == "journal"]
        assert kinds[0] == "hook_started" and kinds[-1] == "hook_ended"
        assert any(e["table"] == "script_runs" and e["row"]["exit_code"] == 3 for e in d["evidence"])

    def test_why_timeout(self, con):
        d = why(con, "hang01")
        c = d["cause"]
        assert c["script"] == HANG and c["timed_out"] is True and c["signal"] == 9
        assert "time budget" in d["verdict"]

    def test_why_epilog_and_refused(self, con):
        ep = why(con, "ep01")["cause"]
        assert ep["script"] == CLEANUP and ep["context"] == "epilog_slurmd"
        assert ep["drain_reason"] == "Epilog error" and "busy" in ep["output"]
        perm = why(con, "perm01")
        assert perm["cause"]["script"] == UNSAFE and "unsafe permissions" in perm["cause"]["refused"]
        assert "refused" in perm["verdict"]
        noexec = why(con, "noexec01")["cause"]
        assert noexec["script"] == NOEXEC and noexec["exit_code"] == 127

    def test_why_systemic_regression(self, con):
        d = why(con, "s123")
        assert d["cause"]["script"] == HEALTH and "unknown option" in d["cause"]["output"]
        s = d["systemic"]
        assert s["fault"] == "script" and s["count"] == 300 and s["nodes_ran"] == 300
        assert len(s["nodes"]) == 50 and s["nodes_truncated"] is True and s["nodes"] == SYSTEMIC_NODES[:50]
        r = d["regression"]
        assert r["changed"] is True and r["old"] != r["new"] and r["new"] == d["cause"]["sha256"]
        assert r["changed_at"].startswith("2026-11-03T11:00")
        assert "regression" in d["verdict"] and "script fault" in d["verdict"]

    def test_why_gpu_xid_near_failure(self, con):
        d = why(con, "gpu01")
        g = d["gpu"]
        assert g["suspicious"] and g["xid"][0]["xid"] == 79 and g["xid"][0]["gpu_index"] == 0
        assert g["ecc_dbe_delta"] == 2 and g["temperature_max_c"] == pytest.approx(90.0)
        assert "XID 79" in d["verdict"]
        assert why(con, "fail01")["gpu"]["samples"] == 0

    def test_why_no_hook_failure_drain(self, con):
        d = why(con, "kt01")
        assert d["cause"] is None and d["systemic"] is None and d["regression"] is None
        assert "no hook failure found" in d["verdict"] and "Kill task failed" in d["verdict"]
        assert d["node_events"][0]["reason"] == "Kill task failed"
        d = why(con, "nr01")
        assert d["cause"] is None and "no hook failure found" in d["verdict"]
        assert d["node_events"][0]["state"] == "DOWN"

    def test_why_hook_drain_without_records(self, con):
        d = why(con, "lost01")
        assert d["cause"] is None and d["verdict"].startswith("lost01: no hook failure found")
        assert "'Prolog error'" in d["verdict"] and "not in the store" in d["verdict"]
        assert d["node_events"][0]["hook_drain"] is True

    def test_why_recovered_and_killed(self, con):
        d = why(con, "rec01")
        assert d["cause"]["script"] == SCRATCH and d["recovered"] is True
        assert "succeeded since" in d["verdict"]
        k = why(con, "kill01")
        assert k["cause"]["runner_killed"] is True and k["cause"]["script"] == GPU

    def test_why_unknown_node(self, con):
        with pytest.raises(NoSuchNode, match="nosuch"):
            why(con, "nosuch")

    def test_why_window_excludes_failure(self, con):
        d = why(con, "fail01", until="2026-11-02T12:00:00Z")
        assert d["cause"] is None and "no hook failure found" in d["verdict"]

    # ---------------------------------------------------------------- drains
    def test_drains_grouped_worst_first(self, con):
        rows = drains(con)
        top = rows[0]
        assert top["script"] == HEALTH and top["count"] == 300 and len(top["nodes"]) == 300
        assert top["exit_codes"] == [1] and top["drain_reason"] == "Prolog error"
        by_script = {r["script"]: r for r in rows}
        assert by_script[SCRATCH]["nodes"] == ["fail01"]  # rec01 recovered
        assert by_script[HANG]["failures"] == ["timed out"]
        assert by_script[CLEANUP]["drain_reason"] == "Epilog error"
        assert by_script[UNSAFE]["failures"][0].startswith("refused")
        assert by_script[GPU]["nodes"] == ["gpu01", "kill01"] or sorted(
            n for r in rows if r["script"] == GPU for n in r["nodes"]) == ["gpu01", "kill01"]
        all_nodes = [n for r in rows for n in r["nodes"]]
        assert len(all_nodes) == len(set(all_nodes))
        assert not {"kt01", "nr01", "rec01", "lost01", *BASE_NODES} & set(all_nodes)
        counts = [r["count"] for r in rows]
        assert counts == sorted(counts, reverse=True)

    def test_drains_window(self, con):
        rows = drains(con, until="2026-11-03T00:00:00Z")
        assert HEALTH not in {r["script"] for r in rows}
        assert drains(con, since="2027-01-01") == []


class TestDuckDBSource(SourceContract):
    @pytest.fixture
    def con(self, scenario_db):
        c = open_source(db=scenario_db)
        yield c
        c.close()


class TestArchiveSource(SourceContract):
    @pytest.fixture
    def con(self, scenario_archive):
        c = open_source(archive=scenario_archive)
        yield c
        c.close()


@pytest.fixture(scope="module")
def compacted_archive(scenario_archive, tmp_path_factory):
    """The scenario's archive after ``hookscope compact`` (every day closed)."""
    import shutil

    from collector.compact import compact
    root = str(tmp_path_factory.mktemp("compacted") / "archive")
    shutil.copytree(scenario_archive, root)
    assert compact(root, today="2099-01-01")
    return root


@pytest.fixture(scope="module")
def half_compacted_archive(scenario_archive, tmp_path_factory):
    """Every partition as a compaction killed after its rename leaves it: the
    compacted file beside all of its inputs (readers must dedupe them)."""
    import shutil

    import duckdb

    from collector import compact as cp
    root = str(tmp_path_factory.mktemp("halfcompacted") / "archive")
    shutil.copytree(scenario_archive, root)

    class Stop(Exception):
        pass

    def stop(step):
        if step == "renamed":
            raise Stop
    con, n = duckdb.connect(":memory:"), 0
    for table in ("hook_runs", "script_runs", "journal", "node_events", "gpu_samples", "span_events"):
        for d, files, _stale in list(cp._partitions(root, table)):
            with pytest.raises(Stop):
                cp._compact_dir(con, table, d, files, crash=stop)
            n += 1
    assert n
    return root


class TestCompactedArchiveSource(SourceContract):
    @pytest.fixture
    def con(self, compacted_archive):
        c = open_source(archive=compacted_archive)
        yield c
        c.close()


class TestHalfCompactedArchiveSource(SourceContract):
    @pytest.fixture
    def con(self, half_compacted_archive):
        c = open_source(archive=half_compacted_archive)
        yield c
        c.close()
