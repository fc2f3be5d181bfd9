"""``why``'s regression check looks for the version that ran before a new one
over the last 2 days first, then the whole lookback: the same answer as one
statement over the lookback (the plain definition, computed in Python here)."""

from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from queries.why import REGRESSION_LOOKBACK, _previous_version

FN = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
D = timedelta(days=1)
P = "/etc/slurm/prolog.d/30-health.sh"


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("CREATE TABLE script_runs (path VARCHAR, sha256 VARCHAR, start_ts TIMESTAMPTZ, _date DATE)")
    yield c
    c.close()


def load(con, rows):
    con.executemany("INSERT INTO script_runs VALUES (?, ?, ?, ?)", [(p, s, t, t.date()) for p, s, t in rows])


def reference(rows, new):
    last = {}
    for p, s, t in rows:
        if p == P and s != new and FN - REGRESSION_LOOKBACK <= t < FN:
            last[s] = max(last.get(s, t), t)
    if not last:
        return []
    s = max(last, key=last.get)
    return [{"sha256": s, "last_seen": last[s].isoformat(timespec="microseconds").replace("+00:00", "Z")}]


@pytest.mark.parametrize("rows", [
    # the old version ran right up to the roll-out: found in the first window
    [(P, "old", FN - 3 * H), (P, "older", FN - 20 * D), (P, "new", FN)],
    # it stopped 10 days before: only the whole lookback finds it
    [(P, "old", FN - 10 * D), (P, "older", FN - 25 * D), (P, "new", FN + H)],
    # only outside the lookback, another path, or the new version itself: none
    [(P, "old", FN - 31 * D), ("/other.sh", "x", FN - H), (P, "new", FN - H)],
    # NULL digests are a version too
    [(P, None, FN - 5 * D), (P, "new", FN)],
])
def test_the_previous_version_is_the_lookbacks_latest(con, rows):
    load(con, rows)
    assert _previous_version(con, P, "new", FN) == reference(rows, "new")
