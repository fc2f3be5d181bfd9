"""``why`` bounds its node-event statement (issue 14: every statement carries
a date bound) without changing its verdict.

The reference is the same ``why`` with the bound taken away (EVENTS_WINDOW of
a century: the unbounded statement it replaced).  On random histories of
hook failures, drains and other node events, on both sources, the bounded
answer must give the same verdict, cause and blame, and its event list must be
the newest part of the reference's.
"""

import random
from datetime import datetime, timedelta, timezone

import pytest

from tests.queries.builder import StoreBuilder, script

import queries.why as W
from queries.source import open_source, parse_time

UNTIL = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
GPU = "/etc/slurm/prolog.d/20-gpu"
DAY = timedelta(days=1)
N_RANDOM = 40


def _scenarios():
    """node -> list of (days before UNTIL, what): fixed edge cases, then random ones."""
    fixed = {
        # no hook failure, one non-hook drain beyond the window: still the verdict's drain
        "old_drain": [(45, "drain")],
        # a failure beyond the window, then a non-hook drain (also beyond): the blame moves
        "fail_then_drain": [(40, "fail"), (35, "drain")],
        # a drain before the failure: it cannot move the blame; the list stops at the failure
        "drain_then_fail": [(50, "drain"), (40, "fail")],
        # a recent drain and old events: the list is the window's
        "recent_drain": [(100, "resume"), (90, "drain"), (80, "resume"), (5, "fail"), (5, "drain")],
        # a Prolog error drain beyond the window, no records of a failure
        "old_hook_drain": [(60, "prolog_drain")],
        "nothing_but_ok": [(3, "ok")],
    }
    rng = random.Random(14)
    kinds = ["fail", "ok", "drain", "resume", "prolog_drain", "down"]
    for i in range(N_RANDOM):
        fixed[f"r{i:02d}"] = [(round(rng.uniform(0.1, 120), 3), rng.choice(kinds))
                              for _ in range(rng.randint(1, 8))]
    return fixed


def _build(b, node, events):
    job = 100
    for days, what in sorted(events, key=lambda e: -e[0]):
        at = UNTIL - timedelta(days=days)
        job += 1
        if what in ("fail", "ok"):
            b.hook(node, at, "prolog_slurmd", job, "ann",
                   [script(GPU, exit_code=2 if what == "fail" else 0, output="x")])
        elif what == "drain":
            b.node_event(node, at + timedelta(minutes=30), "DRAIN", "Kill task failed")
        elif what == "prolog_drain":
            b.node_event(node, at, "DRAIN", "Prolog error")
        elif what == "down":
            b.node_event(node, at, "DOWN", "Not responding")
        else:
            b.node_event(node, at, "IDLE", "resumed")


@pytest.fixture(scope="module", params=["db", "archive"])
def con(request, tmp_path_factory):
    b = StoreBuilder()
    for node, events in _scenarios().items():
        _build(b, node, events)
    d = tmp_path_factory.mktemp("events")
    src = ({"db": b.write_db(d / "h.duckdb")} if request.param == "db"
           else {"archive": b.write_archive(d / "archive")})
    c = open_source(**src, quiet=True)
    yield c
    c.close()


def _reference(con, node, **kw):
    keep = W.EVENTS_WINDOW
    W.EVENTS_WINDOW = timedelta(days=36500)
    try:
        return W.why(con, node, **kw)
    finally:
        W.EVENTS_WINDOW = keep


def _agree(con, node, **kw):
    got, ref = W.why(con, node, **kw), _reference(con, node, **kw)
    assert got["verdict"] == ref["verdict"], node
    assert got["cause"] == ref["cause"] and got.get("earlier_hook_failure") == ref.get("earlier_hook_failure")
    ev, full = got["node_events"], ref["node_events"]
    assert ev == full[:len(ev)], node  # the newest part, in order
    return got, ref


@pytest.mark.parametrize("node", sorted(_scenarios()))
def test_bounded_events_keep_the_verdict(con, node):
    got, ref = _agree(con, node, until=UNTIL)
    ev, full = got["node_events"], ref["node_events"]
    floor = UNTIL - W.EVENTS_WINDOW
    # What was left out is only what cannot matter: older than the window,
    # with a drain inside it, or older than the failure.
    for e in full[len(ev):]:
        t = parse_time(e["time"])
        assert t < floor, node
        assert any(W._is_drain(x) for x in ev) or (
            got["cause"] is not None and t < parse_time(got["cause"]["time"])), node
    # And the window's own events are all there.
    assert [e for e in full if parse_time(e["time"]) >= floor] == ev[:sum(
        parse_time(e["time"]) >= floor for e in full)]


def test_edge_cases_say_what_they_should(con):
    d = W.why(con, "old_drain", until=UNTIL)
    assert d["cause"] is None and "Kill task failed" in d["verdict"]
    d = W.why(con, "fail_then_drain", until=UNTIL)
    assert d["cause"] is None and d["earlier_hook_failure"]["script"] == GPU
    d = W.why(con, "drain_then_fail", until=UNTIL)
    assert d["cause"]["script"] == GPU and d["node_events"] == []
    d = W.why(con, "recent_drain", until=UNTIL)
    assert [e["reason"] for e in d["node_events"]] == ["Kill task failed"]
    d = W.why(con, "old_hook_drain", until=UNTIL)
    assert d["cause"] is None and "'Prolog error'" in d["verdict"]


def test_since_is_the_bound_when_given(con):
    since = UNTIL - timedelta(days=200)
    d = W.why(con, "recent_drain", since=since, until=UNTIL)
    assert [e["reason"] for e in d["node_events"]] == ["Kill task failed", "resumed", "Kill task failed",
                                                        "resumed"]


def test_the_statement_carries_a_date_bound(con, monkeypatch):
    """The first node-event statement is scoped to the window's days."""
    seen = []
    real = W._node_events

    def spy(c, node, since, until, limit=W.EVENTS_LIMIT):
        seen.append(since)
        return real(c, node, since, until, limit)

    monkeypatch.setattr(W, "_node_events", spy)
    W.why(con, "recent_drain", until=UNTIL)
    assert seen == [UNTIL - W.EVENTS_WINDOW]


def test_evidence_from_the_failure_search_is_what_a_second_read_gives(con, monkeypatch):
    """``why`` reuses the failed hook's script rows, read while finding the
    failure, as evidence; the same answer as reading them again."""
    real = W._evidence
    checked = 0
    for node in sorted(_scenarios()):
        got = W.why(con, node, until=UNTIL)
        monkeypatch.setattr(W, "_evidence", lambda c, hook, cause, scripts_read: real(c, hook, cause, {}))
        ref = W.why(con, node, until=UNTIL)
        monkeypatch.setattr(W, "_evidence", real)
        assert got == ref, node
        checked += bool(got["cause"]) and any(e["table"] == "script_runs" for e in got["evidence"])
    assert checked >= 10
