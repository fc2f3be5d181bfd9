"""The CLI (click's CliRunner), exports, errors, the snapshot fallback, and
one real ``hookscope why --json`` subprocess."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tests.queries.queries_scenario import HEALTH, SCRATCH

from queries import QueryError
from queries.cli import audit, drains, why
from queries.export import ExportError, export
from queries.source import SourceError, TimeSpecError, open_source, parse_time
from collector import schema

ROOT = Path(__file__).resolve().parents[2]


def run(cmd, args, code=0):
    res = CliRunner().invoke(cmd, args, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


def test_why_json(scenario_db):
    d = json.loads(run(why, ["fail01", "--db", scenario_db, "--json"]).stdout)
    assert d["node"] == "fail01" and d["cause"]["script"] == SCRATCH and d["cause"]["exit_code"] == 3


def test_why_text(scenario_archive):
    out = run(why, ["kt01", "--archive", scenario_archive]).output
    assert "no hook failure found" in out and "Kill task failed" in out and "node events:" in out


def test_drains_text_and_json(scenario_db):
    out = run(drains, ["--db", scenario_db]).output
    first = out.splitlines()[2]
    assert first.startswith("300 ") and HEALTH in first
    rows = json.loads(run(drains, ["--db", scenario_db, "--json"]).stdout)
    assert rows[0]["count"] == 300


def test_audit_job_text(scenario_db):
    out = run(audit, ["job", "2002", "--db", scenario_db]).output
    assert SCRATCH in out and "carol" in out and out.splitlines()[0].startswith("start")


def test_audit_script_and_verify(scenario_db):
    out = run(audit, ["script", "/etc/slurm/prolog.d/20-gpu.sh", "--db", scenario_db]).output
    assert "configuration drift in 1 hour(s)" in out
    out = run(audit, ["verify", "--db", scenario_db]).output
    assert out.startswith("OK:") and "evicted" in out


def test_audit_verify_exit_code_on_problem(tmp_path):
    from tests.queries.queries_scenario import build_scenario

    b = build_scenario()
    b.rows["journal"].pop(5)
    res = run(audit, ["verify", "--db", b.write_db(tmp_path / "t.duckdb")], code=1)
    assert "PROBLEMS" in res.output and "gap" in res.output


def test_audit_views_prints_runnable_sql(scenario_db):
    sql = run(audit, ["views"]).output
    assert "v_hook_runs" in sql and "v_drift" in sql
    con = duckdb.connect()
    con.execute("ATTACH ? AS store (READ_ONLY)", [scenario_db])
    con.execute("USE store")
    con.execute(sql)  # the printed SQL runs as-is in a DuckDB session
    assert con.execute("SELECT count(*) FROM v_failing_nodes").fetchone()[0] > 300


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_audit_user(scenario_db, tmp_path, fmt):
    out = tmp_path / f"alice.{fmt}"
    run(audit, ["user", "carol", "--db", scenario_db, "--format", fmt, "-o", str(out)])
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    elif fmt == "json":
        rows = json.loads(out.read_text())
    else:
        rows = pq.read_table(out).to_pylist()
    assert rows and {r["user"] for r in rows} == {"carol"}
    assert {"node", "script", "sha256", "exit_code", "start"} <= set(rows[0])
    assert any(str(r["exit_code"]) == "3" for r in rows)


def test_export_dict_and_format_from_extension(scenario_db, tmp_path):
    out = tmp_path / "health.json"
    run(audit, ["script", HEALTH, "--db", scenario_db, "-o", str(out)])
    d = json.loads(out.read_text())
    assert len(d["versions"]) == 2
    export(d, "csv", tmp_path / "health.csv")
    rows = list(csv.DictReader((tmp_path / "health.csv").open()))
    assert len(rows) == 1 and json.loads(rows[0]["versions"])[0]["runs"] == 300


def test_export_errors(tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export([], "xml", tmp_path / "x.xml")
    with pytest.raises(ExportError, match="no-such-dir"):
        export([{"a": 1}], "csv", tmp_path / "no-such-dir" / "x.csv")
    assert not list(tmp_path.iterdir())


def test_source_errors(tmp_path):
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(SourceError, match=str(missing)):
        open_source(db=missing)
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SourceError, match="is it a DuckDB file"):
        open_source(db=junk)
    with pytest.raises(SourceError, match="exactly one source"):
        open_source()
    with pytest.raises(SourceError, match="archive directory"):
        open_source(archive=tmp_path / "noarchive")
    res = CliRunner().invoke(why, ["n1", "--db", str(missing)])
    assert res.exit_code == 1 and str(missing) in res.output
    res = CliRunner().invoke(why, ["n1"], env={"HOOKSCOPE_DB": None, "HOOKSCOPE_ARCHIVE": None})
    assert res.exit_code == 2 and "--db FILE or --archive DIR" in res.output
    res = CliRunner().invoke(drains, ["--db", str(missing), "--since", "yesterday"])
    assert res.exit_code == 1 and "cannot read time 'yesterday'" in res.output


def test_empty_archive_and_empty_store(tmp_path):
    (tmp_path / "archive").mkdir()
    con = open_source(archive=tmp_path / "archive")
    from queries.drains import drains as drains_fn
    from queries.verify import verify_chain

    assert drains_fn(con) == [] and verify_chain(con)["ok"]
    c = duckdb.connect(str(tmp_path / "e.duckdb"))
    schema.create_all(c)
    c.close()
    con = open_source(db=tmp_path / "e.duckdb")
    assert drains_fn(con) == []


def test_parse_time():
    from datetime import datetime, timezone

    now = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
    assert parse_time("24h", now=now) == datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    assert parse_time("7d", now=now) == datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    assert parse_time("30m", now=now).minute == 30
    assert parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse_time("2026-12-01T10:00Z").hour == 10
    assert parse_time("2026-12-01T10:00+02:00").utcoffset().total_seconds() == 7200
    assert parse_time(None) is None
    with pytest.raises(TimeSpecError):
        parse_time("last tuesday")
    assert issubclass(TimeSpecError, QueryError)


LOCKER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_locked_store_falls_back_to_snapshot(scenario_db, tmp_path, capfd):
    live = tmp_path / "hookscope.duckdb"
    shutil.copy(scenario_db, live)
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(live)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(SourceError, match="snapshot"):
            open_source(db=live)
        shutil.copy(scenario_db, schema.snapshot_path(str(live)))
        con = open_source(db=live)
        assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] > 0
        assert "reading its snapshot" in capfd.readouterr().err
        open_source(db=live).close()
        assert "reading its snapshot" not in capfd.readouterr().err  # said once
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def test_real_subprocess_hookscope_why_json(scenario_db):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "emitter.cli", "why", "s007", "--json", "--db", scenario_db],
                       capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["cause"]["script"] == HEALTH and d["systemic"]["fault"] == "script"
    assert d["regression"]["changed"] is True


def test_archive_dedup_without_layout_names(scenario, tmp_path):
    # Files a foreign tool named (no sequence ranges): every key is checked.
    con = open_source(archive=scenario.write_archive(tmp_path / "a", duplicate=True, layout_names=False))
    for table in ("hook_runs", "script_runs", "journal", "gpu_samples"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == len(scenario.rows[table])
    from queries.drains import drains as drains_fn

    assert drains_fn(con)[0]["count"] == 300


def test_archive_partial_redelivery(scenario, tmp_path):
    # Only some partitions hold a redelivered copy: the rest is read as is.
    root = scenario.write_archive(tmp_path / "a")
    day = sorted((Path(root) / "script_runs" / "cluster=c1").iterdir())[0]
    src = next(day.iterdir())
    shutil.copy(src, day / "hookscope-collector-000000000005-000000009999.parquet")
    shutil.copy(src, day / "other-consumer-000000000001-000000000002.parquet")
    con = open_source(archive=root)
    assert con.execute("SELECT count(*) FROM script_runs").fetchone()[0] == len(scenario.rows["script_runs"])
    assert con.execute("SELECT count(DISTINCT span_id) FROM script_runs").fetchone()[0] == \
        len(scenario.rows["script_runs"])


def test_cursors_share_the_source(scenario, tmp_path):
    # The dashboard runs why() on one cursor per thread: every view (and the
    # archive's dedup tables) must be visible from a cursor too.
    from concurrent.futures import ThreadPoolExecutor

    from queries.why import why as why_fn

    for kw in ({"db": scenario.write_db(tmp_path / "c.duckdb")},
               {"archive": scenario.write_archive(tmp_path / "a", duplicate=True, layout_names=False)}):
        con = open_source(**kw)

        def one(node):
            cur = con.cursor()
            try:
                return why_fn(cur, node)["cause"]["script"]
            finally:
                cur.close()

        with ThreadPoolExecutor(3) as ex:
            got = list(ex.map(one, ["fail01", "hang01", "s001"]))
        assert got == [SCRATCH, "/etc/slurm/prolog.d/40-hang.sh", HEALTH]
        from queries.audit import audit_script

        drift = audit_script(con.cursor(), "/etc/slurm/prolog.d/20-gpu.sh")["drift"]
        assert drift[0]["hour"] == "2026-11-02T11:00:00.000000Z"


def test_archive_cluster_partition_escaped_and_typed(tmp_path):
    # The collector keeps the cluster only in the %-escaped partition path.
    from tests.queries.builder import T0, StoreBuilder, script

    for cluster in ("gpu/east 1", "001"):
        b = StoreBuilder(cluster=cluster)
        b.hook("n1", T0, "prolog_slurmd", 7, "zoe", [script("/p/a.sh", exit_code=4)])
        root = b.write_archive(tmp_path / cluster.replace("/", "_"))
        assert not any(c.name == "cluster" for f in Path(root, "hook_runs").rglob("*.parquet")
                       for c in pq.read_schema(f))
        con = open_source(archive=root)
        from queries.drains import drains as drains_fn

        d = drains_fn(con)
        assert d[0]["clusters"] == [cluster] and d[0]["exit_codes"] == [4]
