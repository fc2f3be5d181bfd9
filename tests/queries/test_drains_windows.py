"""``queries.drains.failing_nodes``: the nodes whose latest hook run failed,
found from the failed runs first and decided over widening windows
(2 days, 30 days, everything before the most recent failure), against the
plain definition computed in Python over the same rows."""

from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from queries.drains import CHECK_WINDOWS, failing_nodes

T = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
D = timedelta(days=1)
# (node, start, status, runner_killed): each node decided in a different window
ROWS = [
    ("n-now", T, 1, False),                      # the most recent failure
    ("n-ok-1d", T - D, 1, False), ("n-ok-1d", T - D / 2, 0, False),        # superseded: 2-day window
    ("n-ok-10d", T - 10 * D, 1, False), ("n-ok-10d", T - 5 * D, 0, False),  # 30-day window
    ("n-ok-50d", T - 50 * D, 2, False), ("n-ok-50d", T - 40 * D, 0, False),  # the last, unbounded
    ("n-idle", T - 100 * D, 1, False),           # failed, then never ran again: failing
    ("n-killed", T - 3 * D, None, True),         # runner killed, no status: failing
    ("n-tie", T - D, 0, False), ("n-tie", T - D, 1, False),  # a failed run at the latest start
    ("n-good", T - 200 * D, 1, False), ("n-good", T - D, 0, False),
    ("n-null", T - D, None, None),               # neither failed nor ok: not a failure
]


class Recording:
    """A connection that keeps the SQL it runs."""

    def __init__(self, con):
        self.con, self.sql = con, []

    def execute(self, sql, params=()):
        self.sql.append(sql)
        return self.con.execute(sql, params)


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("CREATE TABLE hook_runs (cluster VARCHAR, node VARCHAR, start_ts TIMESTAMPTZ, "
              "status INTEGER, runner_killed BOOLEAN, _date DATE)")
    c.executemany("INSERT INTO hook_runs VALUES ('c1', ?, ?, ?, ?, ?)",
                  [(n, t, s, k, t.date()) for n, t, s, k in ROWS])
    yield c
    c.close()


def reference(since=None):
    latest, failed_at = {}, {}
    for n, t, s, k in ROWS:
        if since is not None and t < since:
            continue
        latest[n] = max(latest.get(n, t), t)
        if (s is not None and s != 0) or k:
            failed_at.setdefault(n, set()).add(t)
    return {("c1", n): latest[n] for n in latest if latest[n] in failed_at.get(n, ())}


def test_failing_nodes_match_the_definition_window_by_window(con):
    rec = Recording(con)
    got = failing_nodes(rec)
    assert got == reference()
    assert set(got) == {("c1", n) for n in ("n-now", "n-idle", "n-killed", "n-tie")}
    # the failed-run pass, then one statement per window: every window was needed here
    assert len(rec.sql) == 1 + len(CHECK_WINDOWS)
    # the windowed statements carry the archive's partition bound, except the last
    assert all("_date >= ?" in s for s in rec.sql[1:-1]) and "_date" not in rec.sql[-1]


def test_a_since_bound_is_the_last_window(con):
    since = T - 20 * D
    rec = Recording(con)
    assert failing_nodes(rec, since=since) == reference(since)
    assert all("_date >= ?" in s for s in rec.sql)  # nothing reads before --since


def test_no_failed_run_is_one_statement(con):
    con.execute("DELETE FROM hook_runs WHERE status <> 0 OR runner_killed")
    rec = Recording(con)
    assert failing_nodes(rec) == {} and len(rec.sql) == 1
