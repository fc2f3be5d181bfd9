"""queries.scope: statements with a lower date bound read only that bound's
archive files, and ``why``'s independent sections run at once on cursors.

The differential part runs every query over a year of generated history
(tests/bench/bench_queries.generate, small) on the archive twice, scoped and
not, and on the DuckDB store: the answers must be identical.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone

import duckdb
import pytest

from queries import scope
from queries.audit import audit_job, audit_node, audit_script
from queries.drains import drains
from queries.jobwhy import why_job
from queries.source import open_source, rows
from queries.why import why


# ------------------------------------------------------------ the rewrite (pure)
class _Index:
    """Stands in for ArchiveIndex: names the view it would make."""

    def __init__(self):
        self.asked = []

    def view(self, con, table, day):
        self.asked.append((table, day))
        return f"_hs_since_{day:%Y%m%d}.{table}"


@pytest.fixture
def fake():
    con = duckdb.connect(":memory:")
    idx = _Index()
    scope.register(con, idx)
    yield con, idx
    con.close()


def test_rewrite_replaces_table_references_after_from_and_join(fake):
    con, idx = fake
    sql = ("WITH h AS (SELECT * FROM hook_runs WHERE x) SELECT * FROM h "
           "LEFT JOIN script_runs s ON s.hook_id = h.hook_id JOIN\n  journal j ON true")
    out = scope.scoped(con, sql, date(2026, 11, 3))
    assert "FROM _hs_since_20261103.hook_runs WHERE" in out
    assert "JOIN _hs_since_20261103.script_runs s" in out
    assert "JOIN\n  _hs_since_20261103.journal j" in out
    assert "FROM h " in out and {t for t, _ in idx.asked} == {"hook_runs", "script_runs", "journal"}


def test_rewrite_leaves_other_names_alone(fake):
    con, idx = fake
    sql = ("SELECT hook_runs.node, extract(epoch FROM start_ts) FROM hook_runs_daily, "
           "read_parquet('x') JOIN failures f USING (node)")
    assert scope.scoped(con, sql, date(2026, 11, 3)) == sql
    assert idx.asked == []


def test_no_floor_or_no_archive_means_no_rewrite(fake):
    con, _ = fake
    sql = "SELECT * FROM hook_runs"
    assert scope.scoped(con, sql, None) == sql
    other = duckdb.connect(":memory:")
    assert scope.scoped(other, sql, date(2026, 11, 3)) == sql
    # a datetime floor counts by its day
    assert "_hs_since_20261103" in scope.scoped(con, sql, datetime(2026, 11, 3, 23, tzinfo=timezone.utc))


def test_cursor_keeps_the_index_and_together_runs_every_section(fake):
    con, idx = fake
    cur = scope.cursor(con)
    assert "_hs_since_" in scope.scoped(cur, "SELECT * FROM script_runs", date(2026, 1, 1))
    got = scope.together(con, {"a": lambda c: c.execute("SELECT 1").fetchone()[0],
                               "b": lambda c: scope.scoped(c, "FROM node_events", date(2026, 1, 2))})
    assert list(got) == ["a", "b"] and got["a"] == 1 and got["b"] == "FROM _hs_since_20260102.node_events"


def test_together_raises_a_section_error():
    con = duckdb.connect(":memory:")

    def bad(c):
        c.execute("SELECT * FROM no_such_table")

    with pytest.raises(duckdb.CatalogException):
        scope.together(con, {"ok": lambda c: 1, "bad": bad})


# ------------------------------------------------------------ differential
@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A year of history on 40 nodes: the DuckDB store and the archive (one
    file per day, plus a redelivered copy of the last day's script runs)."""
    from tests.bench import bench_queries as bq

    out = tmp_path_factory.mktemp("scope")
    work = duckdb.connect(str(out / "work.duckdb"))
    bq.generate(work, 60_000, 40)
    db, archive = str(out / "hookscope.duckdb"), str(out / "archive")
    bq.write_store(work, db)
    bq.write_archive(work, archive)
    work.close()
    bq.name_archive_files(archive)
    return db, archive


def _answers(con, nodes, jobs):
    out = {"drains": drains(con), "drains since": drains(con, since="2026-11-20")}
    for n in nodes:
        out[f"why {n}"] = why(con, n)
        out[f"why {n} since"] = why(con, n, since="2026-11-15")
        out[f"audit node {n}"] = audit_node(con, n, since="2026-11-28")
    for j in jobs:
        out[f"audit job {j}"] = audit_job(con, j)
        out[f"why job {j}"] = why_job(con, j)
    out["audit script"] = audit_script(con, "/etc/slurm/prolog.d/20-gpu.sh", since="2026-10-01")
    return out


def test_scoped_archive_answers_as_the_full_archive_and_the_store(history):
    db, archive = history
    store = open_source(db=db)
    worst = drains(store)
    nodes = sorted({worst[0]["nodes"][0], "node0000", "node0001", "node0013"})
    jobs = [r[0] for r in store.execute(
        "SELECT job_id FROM hook_runs WHERE node IN ('node0000', ?) ORDER BY start_ts DESC LIMIT 3",
        [worst[0]["nodes"][0]]).fetchall()]
    scoped = open_source(archive=archive)
    full = open_source(archive=archive)
    scope._INDEX.pop(full)  # the same views, no scopes
    a_scoped, a_full = _answers(scoped, nodes, jobs), _answers(full, nodes, jobs)
    assert a_scoped == a_full
    a_store = _answers(store, nodes, jobs)
    for key in a_scoped:
        if key.startswith("why "):
            assert a_scoped[key]["verdict"] == a_store[key]["verdict"], key
    assert a_scoped["drains"] == a_store["drains"]
    # the scoped run did read through scoped views, and those left files out
    made = scoped.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name LIKE '_hs_since_%'").fetchone()[0]
    assert made >= 5
    assert full.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name LIKE '_hs_since_%'").fetchone()[0] == 0


def test_a_floor_really_leaves_earlier_files_out(history):
    """The check above could pass with a rewrite that changes nothing; here a
    floor later than the statement's own bound must lose rows."""
    _db, archive = history
    con = open_source(archive=archive)
    sql = "SELECT count(*) AS n FROM script_runs WHERE _date >= ?"
    early, late = date(2026, 6, 1), date(2026, 11, 1)
    assert rows(con, sql, [early], floor=early)[0]["n"] == rows(con, sql, [early])[0]["n"] > 0
    assert 0 < rows(con, sql, [early], floor=late)[0]["n"] < rows(con, sql, [early])[0]["n"]
    # the redelivered copy of the last day is still counted once
    n = con.execute("SELECT count(*) FROM script_runs").fetchone()[0]
    assert rows(con, "SELECT count(*) AS n FROM script_runs WHERE _date >= ?", [early], floor=early)[0]["n"] < n
    dups = rows(con, "SELECT count(*) - count(DISTINCT span_id) AS d FROM script_runs WHERE _date >= ?",
                [date(2026, 11, 29)], floor=date(2026, 11, 29))[0]["d"]
    assert dups == 0


def test_scopes_per_connection_are_bounded(history, monkeypatch):
    _db, archive = history
    con = open_source(archive=archive)
    monkeypatch.setattr(scope, "MAX_SCOPES", 2)
    for d in (date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)):
        rows(con, "SELECT count(*) AS n FROM hook_runs WHERE _date >= ?", [d], floor=d)
    schemas = {r[0] for r in con.execute(
        "SELECT DISTINCT schema_name FROM duckdb_views() WHERE schema_name LIKE '_hs_since_%'").fetchall()}
    assert schemas == {"_hs_since_20261101", "_hs_since_20261102"}
    # past the bound: the full view, the same answer
    d = date(2026, 11, 3)
    assert rows(con, "SELECT count(*) AS n FROM hook_runs WHERE _date >= ?", [d], floor=d) == \
        rows(con, "SELECT count(*) AS n FROM hook_runs WHERE _date >= ?", [d])


def test_a_day_with_no_files_is_an_empty_view(history):
    _db, archive = history
    con = open_source(archive=archive)
    d = date(2027, 6, 1)
    assert rows(con, "SELECT count(*) AS n FROM hook_runs WHERE _date >= ?", [d], floor=d) == [{"n": 0}]
    assert os.path.isdir(archive)


def test_newest_day_is_the_latest_partition_or_unknown():
    idx = scope.ArchiveIndex({"hook_runs": ["/a/hook_runs/cluster=c1/date=2026-11-03/x.parquet",
                                            "/a/hook_runs/cluster=c2/date=2026-11-30/y.parquet",
                                            "/a/hook_runs/cluster=c1/date=2026-10-01/z.parquet"],
                              "journal": ["/a/journal/cluster=c1/date=2026-11-03/x.parquet", "/a/journal/odd.parquet"]},
                             view_sql=lambda con, table, files: None)
    assert idx.newest_day("hook_runs") == date(2026, 11, 30)
    assert idx.newest_day("journal") is None  # a file with no day could hold anything
    assert idx.newest_day("node_events") is None
    assert scope.newest_day(duckdb.connect(":memory:"), "hook_runs") is None  # not an archive


def test_why_searches_an_archive_from_its_newest_day(history, monkeypatch):
    """An archive that ends before now: the latest hook is found by the first,
    two-day window below its newest day (not after an empty window before now),
    with the same answer as the store's."""
    import queries.why as W

    db, archive = history
    con = open_source(archive=archive)
    newest = scope.newest_day(con, "hook_runs")
    assert newest is not None and newest < datetime.now(timezone.utc).date()
    bounds = []
    real = W.rows

    def spy(c, sql, params=(), floor=None):
        if "runner_killed FROM hook_runs" in " ".join(sql.split()):
            bounds.append(params[1])
        return real(c, sql, params, floor)

    monkeypatch.setattr(W, "rows", spy)
    got = W._latest_hook(con, "node0000", None, None)
    end = datetime(newest.year, newest.month, newest.day, tzinfo=timezone.utc) + timedelta(days=1)
    assert bounds == [end - W.SEARCH_WINDOWS[0]]
    monkeypatch.setattr(W, "rows", real)
    assert got == W._latest_hook(open_source(db=db), "node0000", None, None)


def test_why_reuses_the_failed_hooks_scripts_as_read_without_them(history, monkeypatch):
    """The evidence section reuses the script rows the failure search read;
    the answer is the one that reads them again (every node with a cause)."""
    import queries.why as W

    db, archive = history
    real = W._evidence
    for src in ({"db": db}, {"archive": archive}):
        con = open_source(**src)
        nodes = [r[0] for r in con.execute("SELECT DISTINCT node FROM script_runs WHERE exit_code <> 0 "
                                            "ORDER BY node LIMIT 30").fetchall()]
        checked = 0
        for n in nodes:
            got = W.why(con, n)
            if not got["cause"] or len(got["evidence"]) <= 2:
                continue  # e.g. a non-hook drain after the failure: no evidence to compare
            checked += 1
            monkeypatch.setattr(W, "_evidence", lambda c, hook, cause, scripts_read: real(c, hook, cause, {}))
            try:
                ref = W.why(con, n)
            finally:
                monkeypatch.setattr(W, "_evidence", real)
            assert got == ref, (src, n)
        assert checked >= 1, src  # more nodes: tests/queries/test_why_events.py
