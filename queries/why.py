"""``why NODE``: why a node drained, or is failing hooks.

The answer is built from the store only (no Slurm command is run):

* ``cause``: the latest failed hook run on the node and the script that
  decided it (exit status, signal, timeout, refusal, output excerpt, job, user);
* ``systemic``: whether the same script failed on other nodes in the window,
  and whether the fault therefore lies in the script or in the node;
* ``regression``: whether the script's sha256 changed shortly before its
  failures started;
* ``gpu``: XID, ECC, temperature and throttling samples around the failure;
* ``node_events``: the node state changes observed (drain, down), so that a
  drain with no hook failure (Kill task failed, Not responding) is reported as
  such and never blamed on a hook;
* ``evidence``: the rows and journal records behind the verdict.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from emitter import contract
from queries import QueryError
from queries.source import date_floor, iso, parse_time, rows, window_floor, window_sql
from queries.views import HOOK_FAILED, SCRIPT_FAILED
from queries.audit import attested_label
from queries.scope import newest_day, together
from queries.regression import (  # noqa: F401  (re-exported: the regression check's names)
    PREVIOUS_FIRST, REGRESSION_LOOKBACK, REGRESSION_RATE_WINDOW, REGRESSION_WINDOW, _previous_version, _regression)
from queries.outcomes import INIT_FOR, consequence, init_sentence, init_status, stale_sentence, stale_versions

#: How far around the failure the systemic and GPU checks look by default.
SYSTEMIC_WINDOW = timedelta(hours=24)
GPU_BEFORE = timedelta(minutes=30)
GPU_AFTER = timedelta(minutes=5)
#: A non-hook drain this long after the last hook failure is its own event.
DRAIN_MATCH = timedelta(minutes=10)
HOT_C = 85.0
#: How far back ``why`` looks for a script version the node lags behind.
STALE_WINDOW = timedelta(days=7)
#: How far back ``why`` lists node events without ``--since`` (further only
#: when no drain is in it: back to the failure, or all history without one).
EVENTS_WINDOW = timedelta(days=30)
MAX_NODES_LISTED = 50


class NoSuchNode(QueryError):
    """The store has no record at all of this node."""


def _short(sha):
    return sha[:12] if sha else "?"


#: Where ``why`` looks for the latest failure first: recent windows are cheap
#: (the store is in time order, so DuckDB's zone maps skip older row groups),
#: and most questions are about a recent drain.  The last step is unbounded.
SEARCH_WINDOWS = (timedelta(days=2), timedelta(days=30), None)


def _windows(since, until, anchor=None):
    """(lo, hi) bounds to search, most recent first, ending with the full window."""
    lo, hi = parse_time(since), parse_time(until)
    anchor = anchor or hi or datetime.now(timezone.utc)
    if hi:
        anchor = min(anchor, hi)
    for width in SEARCH_WINDOWS:
        start = lo if width is None else max(lo, anchor - width) if lo else anchor - width
        yield start, hi
        if lo is not None and start <= lo:
            return


def _data_anchor(con):
    """Where searches back in time start: now, or the archive's newest day
    when that is earlier.  Any anchor gives the same answers (each window is
    open-ended up to ``until``); an archive that ends before now (a stopped
    collector, an old copy) is searched from its newest day, so the first,
    cheap window is not an empty one."""
    last = newest_day(con, "hook_runs")
    return None if last is None else min(datetime.now(timezone.utc), _day_end(last))


def _latest_hook(con, node, since, until):
    for lo, hi in _windows(since, until, _data_anchor(con)):
        params = [node]
        win = window_sql("start_ts", lo, hi, params)
        found = rows(con, f"SELECT hook_id, start_ts, status, context, runner_killed FROM hook_runs "
                          f"WHERE node = ?{win} ORDER BY start_ts DESC LIMIT 1", params, window_floor(lo))
        if found:
            return found[0]
    return None


def _day_end(day):
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)


def _latest_failure(con, node, since, until, latest, scripts_read):
    """(hook row, deciding script row) of the node's latest failed hook."""
    anchor = parse_time(latest["start_ts"]) + HOOK_SPAN if latest else None
    for lo, hi in _windows(since, until, anchor):
        found = _latest_failure_in(con, node, lo, hi, scripts_read)
        if found[0] or found[1]:
            return found
    return None, None


def _latest_failure_in(con, node, lo, hi, scripts_read):
    """As _latest_failure, in [lo, hi); ``scripts_read[hook_id]`` gets the script
    rows of the hook it returns with a script (what _hook_scripts reads)."""
    params = [node]
    win = window_sql("start_ts", lo, hi, params)
    got = together(con, {
        "hook": lambda c: rows(c, f"""SELECT * FROM hook_runs WHERE node = ?{win} AND {HOOK_FAILED}
                                      ORDER BY start_ts DESC LIMIT 1""", params, window_floor(lo)),
        "script": lambda c: rows(c, f"""SELECT * FROM script_runs WHERE node = ?{win} AND {SCRIPT_FAILED}
                                        ORDER BY start_ts DESC, idx LIMIT 1""", params, window_floor(lo))})
    hook, script = got["hook"], got["script"]
    # A failed script's hook failed too (normally); prefer the script row and
    # fetch its hook, unless a later hook failed with no script to blame.
    if script and (not hook or hook[0]["start_ts"] <= script[0]["start_ts"]
                   or hook[0]["hook_id"] == script[0]["hook_id"]):
        st = parse_time(script[0]["start_ts"])
        hid = script[0]["hook_id"]
        # The hook row and its scripts at once (one core is otherwise idle
        # here): the scripts over every start the hook can have, then kept to
        # the hook's own span (as _hook_scripts) once its start is known; the
        # evidence section reuses them.
        got = together(con, {
            "hook": lambda c: rows(c, "SELECT * FROM hook_runs WHERE node = ? AND hook_id = ? AND start_ts <= ? "
                                      "AND start_ts >= ? AND _date >= ?",
                                   [node, hid, st, st - HOOK_SPAN, date_floor(st - HOOK_SPAN)],
                                   date_floor(st - HOOK_SPAN)),
            "scripts": lambda c: _scripts_of(c, node, hid, st - HOOK_SPAN, st + HOOK_SPAN, mark_failed=True)})
        h = got["hook"]
        if not h:
            return None, script[0]
        t = parse_time(h[0]["start_ts"])
        mine = [r for r in got["scripts"] if t <= parse_time(r["start_ts"]) <= t + HOOK_SPAN]
        first = next((r for r in mine if r["_hs_failed"]), script[0])
        for r in mine:
            del r["_hs_failed"]
        scripts_read[hid] = mine
        return h[0], first
    if hook:
        return hook[0], None
    return None, None


#: Longest a hook can run (scripts start within this after their hook started).
HOOK_SPAN = timedelta(days=1)


def _hook_scripts(con, hook, failed_only=False):
    """The script rows of one hook, found through the node and time bounds
    (zone maps) rather than a scan of every script run's hook_id."""
    t = parse_time(hook["start_ts"])
    return _scripts_of(con, hook["node"], hook["hook_id"], t, t + HOOK_SPAN, failed_only)


def _scripts_of(con, node, hook_id, lo, hi, failed_only=False, mark_failed=False):
    """Script rows of ``hook_id`` on ``node`` starting in [lo, hi], by idx;
    with ``mark_failed``, each with ``_hs_failed`` (views.SCRIPT_FAILED)."""
    flt = f" AND {SCRIPT_FAILED}" if failed_only else ""
    mark = f", {SCRIPT_FAILED} AS _hs_failed" if mark_failed else ""
    return rows(con, f"""SELECT *{mark} FROM script_runs WHERE node = ? AND hook_id = ?
                         AND start_ts >= ? AND start_ts <= ? AND _date >= ?{flt} ORDER BY idx""",
                [node, hook_id, lo, hi, date_floor(lo)], date_floor(lo))


def _cause(hook, script):
    if hook is None and script is None:
        return None
    src = script or {}
    h = hook or {}
    return {
        "context": src.get("context") or h.get("context"),
        "script": src.get("path"),
        "sha256": src.get("sha256"),
        "exit_code": src.get("exit_code") if script else h.get("status"),
        "signal": src.get("signal"),
        "timed_out": bool(src.get("timed_out")),
        "refused": src.get("refused"),
        "runner_killed": bool(src.get("runner_killed") or h.get("runner_killed")),
        "output": src.get("output"),
        "job_id": src.get("job_id") or h.get("job_id"),
        "user": src.get("user_name") or h.get("user_name"),
        "time": src.get("start_ts") or h.get("start_ts"),
        "hook_id": h.get("hook_id") or src.get("hook_id"),
        "hook_status": h.get("status"),
        "duration_ms": src.get("duration_ms"),
        "drain_reason": contract.DRAIN_REASON.get(src.get("context") or h.get("context")),
        "consequence": consequence(src.get("context") or h.get("context")),
        # who the node attests wrote it: root, or a non-root hook's own uid (docs/journal.md)
        "attested": attested_label(h.get("attested_uid") if hook else src.get("attested_uid"),
                                   src.get("context") or h.get("context")),
    }


def _systemic(con, node, cause, since, until):
    """Did the same script version fail on other nodes in the window?

    Counted over the nodes that ran the failing sha256 (a version rolled out
    to a few nodes and failing on all of them is a script fault, even if the
    old version runs fine elsewhere); failures of other versions of the
    script are reported beside it.
    """
    if not cause or not cause["script"]:
        return None
    t = parse_time(cause["time"])
    lo = parse_time(since) or (t - SYSTEMIC_WINDOW)
    hi = parse_time(until) or (t + SYSTEMIC_WINDOW)
    per_node = rows(con, f"""
        SELECT node, sha256 IS NOT DISTINCT FROM ? AS same, count(*) FILTER (WHERE {SCRIPT_FAILED}) AS failures
        FROM script_runs WHERE path = ? AND start_ts >= ? AND start_ts <= ? AND _date >= ?
        GROUP BY ALL""", [cause["sha256"], cause["script"], lo, hi, date_floor(lo)], date_floor(lo))
    same = [r for r in per_node if r["same"]]
    failed = sorted(r["node"] for r in same if r["failures"])
    ok = sorted(r["node"] for r in same if not r["failures"])
    other_failed = sorted({r["node"] for r in per_node if not r["same"] and r["failures"]})
    others = [n for n in failed if n != node]
    ran = len(same)
    if others and len(failed) * 2 >= ran:
        fault, why_ = "script", f"{len(failed)} of {ran} nodes that ran this version failed"
    elif ok:
        fault, why_ = "node", f"only {len(failed)} of {ran} nodes that ran this version failed"
    else:
        fault, why_ = "unknown", "no other node ran this version of the script in the window"
    return {
        "count": len(failed),
        "nodes": failed[:MAX_NODES_LISTED],
        "nodes_truncated": len(failed) > MAX_NODES_LISTED,
        "ok_nodes": len(ok),
        "nodes_ran": ran,
        "other_versions_failed_nodes": len(other_failed),
        "fault": fault,
        "reason": why_,
        "window": [iso(lo), iso(hi)],
    }


def _gpu(con, node, around):
    if around is None:
        return None
    t = parse_time(around)
    lo, hi = t - GPU_BEFORE, t + GPU_AFTER
    # One statement: the window's samples once, then the summary and the XIDs.
    got = rows(con, """
        WITH g AS MATERIALIZED (
            SELECT gpu_index, ts, temperature_c, ecc_sbe, ecc_dbe, retired_pages, throttle_reasons, xid
            FROM gpu_samples WHERE node = ? AND ts >= ? AND ts <= ? AND _date >= ?),
             x AS (SELECT gpu_index, xid, min(ts) AS first_seen, count(*) AS samples
                   FROM g WHERE coalesce(xid, 0) <> 0 GROUP BY gpu_index, xid)
        SELECT count(*) AS samples, count(DISTINCT gpu_index) AS gpus,
               max(temperature_c) AS temperature_max_c,
               max(ecc_sbe) - min(ecc_sbe) AS ecc_sbe_delta,
               max(ecc_dbe) - min(ecc_dbe) AS ecc_dbe_delta,
               max(ecc_dbe) AS ecc_dbe_max,
               max(retired_pages) - min(retired_pages) AS retired_pages_delta,
               bit_or(throttle_reasons) AS throttle_reasons,
               (SELECT coalesce(list({'gpu_index': gpu_index, 'xid': xid, 'first_seen': first_seen,
                                      'samples': samples} ORDER BY first_seen), []) FROM x) AS _xids
        FROM g""", [node, lo, hi, date_floor(lo)], date_floor(lo))[0]
    xids = got.pop("_xids")
    s = got
    signals = []
    for x in xids:
        signals.append(f"XID {x['xid']} on GPU {x['gpu_index']} at {x['first_seen']}")
    if s["ecc_dbe_delta"]:
        signals.append(f"{s['ecc_dbe_delta']} new uncorrected ECC errors")
    if s["temperature_max_c"] is not None and s["temperature_max_c"] >= HOT_C:
        signals.append(f"temperature up to {s['temperature_max_c']:.0f} C")
    if s["throttle_reasons"]:
        signals.append(f"throttling (reasons bitmask {s['throttle_reasons']:#x})")
    return {"window": [iso(lo), iso(hi)], **s, "xid": xids,
            "suspicious": bool(signals), "signals": signals}


EVENTS_LIMIT = 20


def _node_events(con, node, since, until, limit=EVENTS_LIMIT):
    """The node's latest ``limit`` events in [since, until), newest first."""
    params = [node]
    win = window_sql("ts", since, until, params)
    ev = rows(con, f"""SELECT ts AS time, state, reason, source, event_id FROM node_events
                       WHERE node = ?{win} ORDER BY ts DESC LIMIT {int(limit)}""", params, window_floor(since))
    hook_reasons = set(contract.DRAIN_REASON.values())
    for e in ev:
        e["hook_drain"] = (e["reason"] or "") in hook_reasons
    return ev


def _events_floor(since, until):
    """Where the first node-event statement starts: ``since``, else
    EVENTS_WINDOW before ``until`` (or now).  A date bound: without one the
    statement opens every day of the archive (25 ms of a year's files)."""
    if since is not None:
        return parse_time(since)
    return (parse_time(until) or datetime.now(timezone.utc)) - EVENTS_WINDOW


def _older_events(con, node, events, floor, since, cause):
    """Events before ``floor`` that can still change the verdict, appended.

    The verdict reads the latest drain/down event.  A drain inside the window
    is the latest; without one, an older drain matters only if it came after
    the failure (it then takes the blame off the hook, DRAIN_MATCH), or, with
    no failure at all, at any age.  So the list is extended back to the
    failure, or over all history when there is none, and only then."""
    if since is not None or any(_is_drain(e) for e in events) or len(events) >= EVENTS_LIMIT:
        return events
    back = None
    if cause is not None:
        back = parse_time(cause["time"])
        if back >= floor:
            return events  # any drain before floor is before the failure
    return events + _node_events(con, node, back, floor, EVENTS_LIMIT - len(events))


def _evidence(con, hook, cause, scripts_read):
    if not hook:
        return []
    ev = [{"table": "hook_runs", "row": hook}]
    scripts = scripts_read.get(hook["hook_id"])
    for s in scripts if scripts is not None else _hook_scripts(con, hook):
        ev.append({"table": "script_runs", "row": s})
    for r in rows(con, """SELECT seq, kind, hash, record FROM journal
                          WHERE cluster = ? AND node = ? AND hook_id = ? AND _date >= ? ORDER BY seq""",
                  [hook["cluster"], hook["node"], hook["hook_id"], date_floor(hook["start_ts"])],
                  date_floor(hook["start_ts"])):
        ev.append({"table": "journal", "seq": r["seq"], "kind": r["kind"], "hash": r["hash"],
                   "record": r["record"]})
    return ev


def _is_drain(e):
    st = (e.get("state") or "").lower()
    return "drain" in st or "down" in st or "fail" in st


def _recovered_since(con, node, hook, cause) -> bool:
    """Did the node run the failed hook's context fine since, for another job?

    Slurm still runs the Epilog and EpilogSlurmctld of a job whose prolog
    failed, so "a later hook succeeded" proves nothing while the node stays
    drained; only the same context succeeding for a later job means the node
    was resumed and is healthy again.
    """
    if not (hook and cause):
        return False
    found = rows(con, """SELECT 1 AS ok FROM hook_runs
                         WHERE node = ? AND context = ? AND start_ts > ? AND _date >= ? AND status = 0
                           AND NOT coalesce(runner_killed, false)
                           AND job_id IS DISTINCT FROM ? LIMIT 1""",
                 [node, hook["context"], hook["start_ts"], date_floor(hook["start_ts"]), hook.get("job_id")],
                 date_floor(hook["start_ts"]))
    return bool(found)


def why(con, node, since=None, until=None) -> dict:
    """Explain why ``node`` drained or is failing hooks (see the module doc)."""
    if not node:
        raise QueryError("why needs a node name")
    node = str(node)
    scripts_read: dict = {}  # hook_id -> its script rows, read while finding the failure

    def failure(c):
        # The failure search anchors at the latest hook, but its first window
        # is tried beside that search: the latest failure in a window that
        # reaches ``until`` is the latest of all, whatever the window's start.
        lo, hi = next(_windows(since, until, _data_anchor(c)))
        got = together(c, {"latest": lambda c2: _latest_hook(c2, node, since, until),
                           "recent": lambda c2: _latest_failure_in(c2, node, lo, hi, scripts_read)})
        latest, found = got["latest"], got["recent"]
        if not (found[0] or found[1]):
            found = _latest_failure(c, node, since, until, latest, scripts_read)
        return latest, found

    # Independent sections run at once on cursors (queries.scope.together).
    floor = _events_floor(since, until)
    first = together(con, {"failure": failure, "events": lambda c: _node_events(c, node, floor, until)})
    latest, (hook, script) = first["failure"]
    cause = _cause(hook, script)
    events = _older_events(con, node, first["events"], floor, since, cause)
    drain = next((e for e in events if _is_drain(e)), None)
    earlier = None
    if drain and not drain["hook_drain"] and (
            cause is None or parse_time(cause["time"]) < parse_time(drain["time"]) - DRAIN_MATCH):
        # The latest drain has a non-hook reason and no hook failed right
        # before it: do not blame an older hook failure for it.
        earlier, cause, hook = cause, None, None
    if cause is None and latest is None and not events:
        # EXISTS stops at the first row; a count read every day of the archive
        known = rows(con, "SELECT EXISTS (SELECT 1 FROM hook_runs WHERE node = ?) AS n", [node])[0]["n"]
        if not known:
            raise NoSuchNode(f"the store has no hook run and no node event for node {node!r}: "
                             f"check the name (as in 'sinfo -N') and the --since/--until window")
    # Bounded (a week before the failure, or before now): a whole-store
    # version scan would cost more than the rest of why together.
    ref = parse_time(cause["time"]) if cause else (parse_time(until) or datetime.now(timezone.utc))
    around = cause["time"] if cause else (drain["time"] if drain else None)
    # Longest first, so that the sections pack onto the workers.
    got = together(con, {
        "regression": lambda c: _regression(c, node, cause),
        "stale": lambda c: stale_versions(c, node=node, since=since or ref - STALE_WINDOW,
                                          until=until or ref + timedelta(hours=1)),
        # A failing job hook on a node whose boot-time init failed (or never
        # ran) most likely wants what the init script should have installed.
        "init": lambda c: (init_status(c, node, before=cause["time"], context=INIT_FOR.get(cause["context"]))
                           if cause else None),
        "evidence": lambda c: _evidence(c, hook, cause, scripts_read),
        "systemic": lambda c: _systemic(c, node, cause, since, until),
        "gpu": lambda c: _gpu(c, node, around),
        "recovered": lambda c: _recovered_since(c, node, hook, cause),
    })
    latest_ok, systemic, regression, gpu, init, stale = (
        got["recovered"], got["systemic"], got["regression"], got["gpu"], got["init"], got["stale"])
    out = {
        "node": node,
        "verdict": _verdict(node, cause, systemic, regression, gpu, drain, events, latest_ok)[:-1]
        + "".join(f"; {x}" for x in [init_sentence(node, init)] + [stale_sentence(r) for r in stale] if x) + ".",
        "cause": cause,
        "systemic": systemic,
        "regression": regression,
        "gpu": gpu,
        "evidence": got["evidence"],
        "node_events": events,
        "latest_hook": latest,
        "recovered": latest_ok,
        "init": init,
        "stale": stale,
    }
    if earlier:
        out["earlier_hook_failure"] = earlier
    return out


def _what(cause):
    if cause["refused"]:
        return f"was refused ({cause['refused']})"
    if cause["timed_out"]:
        return "ran past its time budget and was killed"
    if cause["runner_killed"]:
        return "was running when the runner itself was killed"
    if cause["signal"]:
        return f"was killed by signal {cause['signal']} (exit {cause['exit_code']})"
    return f"exited {cause['exit_code']}"


def _verdict(node, cause, systemic, regression, gpu, drain, events, latest_ok):
    if cause is None:
        if drain and drain["hook_drain"]:
            return (f"{node}: no hook failure found, although Slurm gave {drain['reason']!r} at "
                    f"{drain['time']} (source {drain['source']}): the hook's records are not in the "
                    f"store (not shipped yet, or lost: check the node's agent and 'hookscope audit verify').")
        if drain:
            return (f"{node}: no hook failure found; the node went {drain['state']} at {drain['time']} "
                    f"with reason {drain['reason']!r} (source {drain['source']}), not caused by a hook.")
        if events:
            return f"{node}: no hook failure found; {len(events)} node event(s) recorded, see node_events."
        return f"{node}: no hook failure found in the window."
    who = cause["script"] or "the hook (no script to blame)"
    job = f" for job {cause['job_id']}" if cause["job_id"] else ""
    user = f" (user {cause['user']})" if cause["user"] else ""
    parts = [f"{node}: {cause['context']} {who}"
             + (f" [sha256 {_short(cause['sha256'])}]" if cause["sha256"] else "")
             + f" {_what(cause)} at {cause['time']}{job}{user}"]
    if cause.get("attested", "root") != "root":  # a non-root hook's own claim, not the node's root
        parts[0] += f" [user-attested: {cause['attested']}]"
    if cause["drain_reason"]:
        parts[0] += f" -> Slurm drains with '{cause['drain_reason']}'"
    con_ = cause.get("consequence") or {}
    if con_.get("job") or con_.get("scope") == "boot":
        parts.append(con_["text"].split("; ", 1)[-1] if con_.get("node") else con_["text"])
        if con_.get("assumed"):
            parts[-1] += f" (assumed, not read: {', '.join(con_['assumed'])})"
    if systemic:
        if systemic["fault"] == "script":
            parts.append(f"script fault: failed on {systemic['count']} of {systemic['nodes_ran']} nodes")
        elif systemic["fault"] == "node":
            parts.append(f"node fault: {systemic['ok_nodes']} other nodes ran it fine")
    if regression and regression.get("changed"):
        parts.append(f"regression: sha256 changed {_short(regression['old'])} -> "
                     f"{_short(regression['new'])} at {regression['changed_at']}")
    if gpu and gpu["suspicious"]:
        parts.append("GPU: " + ", ".join(gpu["signals"][:3]))
    if latest_ok:
        parts.append("hooks have succeeded since")
    return "; ".join(parts) + "."
