"""``why``'s regression check looks for the version that ran before a new one
over the last 2 days first, then the whole lookback: the same answer as one
statement over the lookback (the plain definition, computed in Python here)."""

from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from queries.regression import REGRESSION_LOOKBACK, _previous_version

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


# ---------------------------------------------------------------- in _regression
# _regression finds the previous version inside its rates statement when the
# PREVIOUS_FIRST window before the roll-out has one, and calls
# _previous_version for the rest of the lookback only when it has none: the
# same ``old`` as _previous_version over both windows, on random histories.
@pytest.fixture
def runs():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("CREATE TABLE script_runs (path VARCHAR, sha256 VARCHAR, start_ts TIMESTAMPTZ, _date DATE, "
              "exit_code INTEGER, timed_out BOOLEAN, refused VARCHAR, runner_killed BOOLEAN)")
    yield c
    c.close()


@pytest.mark.parametrize("seed", range(30))
def test_regression_names_the_same_previous_version(runs, seed):
    import random

    from queries.source import iso, parse_time
    from queries.regression import _regression

    rng = random.Random(seed)
    t = FN + 40 * D
    rows_ = []
    for _ in range(rng.randint(1, 40)):
        sha = rng.choice(["old", "older", None, "new", "new"])
        at = t - timedelta(seconds=rng.uniform(0, 45 * 86400))
        if sha == "new" and rng.random() < 0.7:
            at = t - timedelta(seconds=rng.uniform(0, 3 * 86400))  # mostly a recent roll-out
        rows_.append((rng.choice([P, P, "/other.sh"]), sha, at, at.date(), rng.choice([0, 0, 1]), False, None, False))
    rows_.append((P, "new", t - H, (t - H).date(), 1, False, None, False))
    runs.executemany("INSERT INTO script_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows_)
    got = _regression(runs, "n1", {"script": P, "sha256": "new", "time": iso(t)})
    # the new version's first run as _regression defines it (plain Python)
    lo = t - REGRESSION_LOOKBACK
    news = [r[2] for r in rows_ if r[0] == P and r[1] == "new" and lo <= r[2] <= t]
    lo_new = lo if any(r < t - 2 * D for r in news) else max(lo, t - 2 * D)
    fn = min(r for r in news if r >= lo_new)
    prev = _previous_version(runs, P, "new", fn)
    assert got["old"] == (prev[0]["sha256"] if prev else None)
    assert (parse_time(got["changed_at"]) if got["changed_at"] else None) == (fn if prev else None)
