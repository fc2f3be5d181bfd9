"""``why``'s regression check: did the failing script version replace
another one shortly before its failures began, and does it fail clearly more
than the version it replaced?  (Split from :mod:`queries.why`.)"""

from __future__ import annotations

from datetime import timedelta

from queries.source import date_floor, iso, parse_time, rows
from queries.views import SCRIPT_FAILED

#: A sha256 change this long before the first failure counts as a regression.
REGRESSION_WINDOW = timedelta(hours=24)
#: How far back the regression check looks for the version change.
REGRESSION_LOOKBACK = timedelta(days=30)
#: Failure rates of the old and new version are compared over this much history.
REGRESSION_RATE_WINDOW = timedelta(days=7)
REGRESSION_MIN_RATE_RISE = 0.01
#: Where the version that ran before a new one is looked for first: the
#: last_seen found there is the lookback's latest too (any row there is
#: later than every row before it), and a roll-out replaces a version that
#: was running, so the full lookback is read only when nothing ran just before.
PREVIOUS_FIRST = timedelta(days=2)


def _regression(con, node, cause):
    """Did the failing sha256 replace another version shortly before its
    failures began?  Looked for within REGRESSION_LOOKBACK of the failure."""
    if not cause or not cause["script"] or not cause["sha256"]:
        return None
    path, new = cause["script"], cause["sha256"]
    t = parse_time(cause["time"])
    lo = t - REGRESSION_LOOKBACK
    # A new version is most often new: when it did not run before the last
    # PREVIOUS_FIRST days (a test the archive's Bloom filters on sha256 answer
    # from few files), its first run is in them and the pass below reads
    # only those days and the rate window before them.
    older = rows(con, "SELECT EXISTS (SELECT 1 FROM script_runs WHERE path = ? AND sha256 = ? "
                      "AND start_ts >= ? AND start_ts < ? AND _date >= ?) AS x",
                 [path, new, lo, t - PREVIOUS_FIRST, date_floor(lo)], date_floor(lo))[0]["x"]
    lo_new = lo if older else max(lo, t - PREVIOUS_FIRST)
    # One pass: the new version's first run ``fn`` (>= lo_new), each
    # version's runs and failures from ``fn`` - REGRESSION_RATE_WINDOW on (the
    # new version's own first run is in there, so no row means it never ran),
    # and the latest other version in the PREVIOUS_FIRST before ``fn`` (also
    # inside the rows read: fn - PREVIOUS_FIRST >= rlo), which saves
    # _previous_version's statement unless that window is empty.
    rlo = lo_new - REGRESSION_RATE_WINDOW
    rates = rows(con, f"""WITH s AS MATERIALIZED (
                              SELECT sha256, start_ts, {SCRIPT_FAILED} AS failed FROM script_runs
                              WHERE path = ? AND start_ts >= ? AND start_ts <= ? AND _date >= ?),
                               f AS (SELECT min(start_ts) AS fn FROM s WHERE sha256 = ? AND start_ts >= ?),
                               p AS (SELECT arg_max({{'sha256': s.sha256}}, s.start_ts) AS prev FROM s, f
                                     WHERE s.sha256 IS DISTINCT FROM ? AND s.start_ts < f.fn
                                       AND s.start_ts >= f.fn - ?::INTERVAL)
                          SELECT s.sha256, any_value(f.fn) AS fn, any_value(p.prev) AS prev, count(*) AS runs,
                                 count(*) FILTER (WHERE failed) AS failures,
                                 min(start_ts) FILTER (WHERE failed AND start_ts >= f.fn) AS first_failure
                          FROM s, f, p WHERE s.start_ts >= f.fn - ?::INTERVAL GROUP BY s.sha256""",
                 [path, rlo, t, date_floor(rlo), new, lo_new, new, PREVIOUS_FIRST, REGRESSION_RATE_WINDOW],
                 date_floor(rlo))
    if not rates:
        return {"changed": False, "old": None, "new": new, "changed_at": None}
    fn = parse_time(rates[0]["fn"])
    near = rates[0]["prev"]
    prev = [near] if near is not None else _previous_version(con, path, new, fn, (REGRESSION_LOOKBACK,))
    rate = {r["sha256"]: (r["failures"] / r["runs"] if r["runs"] else None) for r in rates}
    first_fail = next((r["first_failure"] for r in rates if r["sha256"] == new), None)
    base = {"new": new, "first_failure": first_fail, "new_failure_rate": rate.get(new),
            "lookback": [iso(lo), iso(t)]}
    if not prev:
        # Nothing else ran within the lookback: no change to blame.
        return {"changed": False, "old": None, "changed_at": None, **base}
    old = prev[0]["sha256"]
    ff = parse_time(first_fail) if first_fail else t
    old_rate, new_rate = rate.get(old), rate.get(new)
    # The new version must fail clearly more than the old one did, across all
    # nodes: a node-local fault that began the day of a roll-out is no regression.
    changed = (ff - fn <= REGRESSION_WINDOW and (
        old_rate is None or new_rate is None
        or new_rate > max(2 * old_rate, old_rate + REGRESSION_MIN_RATE_RISE)))
    return {"changed": bool(changed), "old": old, "changed_at": iso(fn), "old_failure_rate": old_rate,
            **base}


def _previous_version(con, path, new, fn, backs=(PREVIOUS_FIRST, REGRESSION_LOOKBACK)):
    """The latest other version of ``path`` that ran before ``fn`` (within
    REGRESSION_LOOKBACK), looked for ``backs`` before it in turn:
    [{sha256, last_seen}] or []."""
    for back in backs:
        lo = fn - min(back, REGRESSION_LOOKBACK)
        prev = rows(con, """SELECT sha256, max(start_ts) AS last_seen
                            FROM script_runs WHERE path = ? AND sha256 IS DISTINCT FROM ? AND start_ts < ?
                              AND start_ts >= ? AND _date >= ?
                            GROUP BY sha256 ORDER BY last_seen DESC LIMIT 1""",
                    [path, new, fn, lo, date_floor(lo)], date_floor(lo))
        if prev:
            return prev
    return []
