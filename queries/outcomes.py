"""What a hook failure did, in Slurm's words, and the facts around it that
change the answer: the site's settings, boot-time init runs, stale script
versions and when the prolog ran.

Every function reads the store only.  Where the records cannot show a setting
(``nohold_on_prolog_fail`` lives in slurm.conf, which no hook sees; nothing in
a hook's environment says "batch"), the answer says it is inferred, and from
what; a caller that knows the setting passes it and the answer says "read".
"""

from __future__ import annotations

from datetime import timedelta

from emitter import contract
from queries.source import date_floor, iso, parse_time, rows, window_floor, window_sql
from queries.views import HOOK_FAILED, SCRIPT_FAILED

#: A prolog that ran this long after the job's allocation (its
#: PrologSlurmctld) ran at the first step, not at allocation.
PROLOG_AT_STEP_AFTER = timedelta(seconds=30)
#: A prolog shorter than this delays nobody worth telling.
PROLOG_DELAY_MATTERS = timedelta(seconds=1)
#: How far before a failure the init check looks for the node's boot run.
INIT_LOOKBACK = timedelta(days=90)


def hook_name(context) -> str:
    c = contract.CONSEQUENCE.get(context or "")
    return c["hook"] if c else (context or "hook")


def consequence(context, kind=None, nohold=None) -> dict:
    """What Slurm does when a hook of ``context`` fails.

    ``kind``: "batch", "interactive" or None (unknown); ``nohold``: True or
    False when SchedulerParameters is known, None when it is not.  Returns
    {hook, node, drain_reason, job, reason, scope, text, inferred[]}."""
    c = contract.CONSEQUENCE.get(context or "")
    if c is None:
        return {"hook": context, "node": None, "drain_reason": None, "job": None, "reason": None,
                "scope": None, "text": f"unknown context {context!r}: no Slurm consequence known",
                "inferred": []}
    inferred, assumed = [], []
    drain = contract.DRAIN_REASON.get(context)
    job, reason = None, None
    if c["scope"] == "job":
        if kind is None and c["batch"] != c["interactive"]:
            kind = "batch"
            assumed.append("a batch job")
            inferred.append("the job is taken to be a batch job (sbatch): no hook environment says so; "
                            f"an interactive job (salloc, srun) would be {c['interactive']}")
        job = c[kind or "batch"]
        if kind != "interactive" and "nohold" in c:
            if nohold is None:
                assumed.append("no nohold_on_prolog_fail")
                inferred.append("held assumes SchedulerParameters lacks nohold_on_prolog_fail "
                                "(slurm.conf is not visible to hooks; pass --scheduler-parameters to say)")
            elif nohold:
                job = c["nohold"]
            if job == c["batch"]:
                reason = c.get("batch_reason")
    elif c["scope"] in ("task", "step"):
        job = c["batch"]
    parts = []
    if c["node"]:
        parts.append(f"Slurm sets the node {c['node']} with reason '{drain}'")
    if job:
        parts.append(f"the job is {job}" if c["scope"] == "job" else f"the {c['scope']} is cancelled")
        if reason:
            parts[-1] += f" (Reason '{reason}')"
    if c["scope"] == "logged" and not c["node"]:
        parts.append("Slurm only logs it")
    elif c["scope"] == "logged":
        parts.append("the job itself had already ended")
    if c["scope"] == "boot":
        parts.append("Slurm is not told: the node goes on accepting jobs without what the script "
                     "should have set up")
    return {"hook": c["hook"], "node": c["node"], "drain_reason": drain, "job": job, "reason": reason,
            "scope": c["scope"], "text": "; ".join(parts), "inferred": inferred, "assumed": assumed}


def nohold_setting(scheduler_parameters):
    """True/False from a SchedulerParameters value, None when not given."""
    if scheduler_parameters is None:
        return None
    return "nohold_on_prolog_fail" in str(scheduler_parameters).lower().replace(" ", "").split(",")


# ---------------------------------------------------------------- init runs
#: The init context of the node where a hook of this context runs (the
#: controller's hooks have none: slurmctld's host is not a worker or login).
INIT_FOR = {"prolog_slurmd": "init_worker", "epilog_slurmd": "init_worker", "prolog_task": "init_worker",
            "epilog_task": "init_worker", "prolog_srun": "init_login", "epilog_srun": "init_login"}


def init_status(con, node, before=None, context="init_worker") -> dict | None:
    """The node's latest boot-time ``context`` run before ``before``, and
    whether peers have one when it has none.

    None when no node of the store ever recorded an init run: the site does
    not run its init scripts through hookscope, and silence proves nothing."""
    if context not in contract.INIT_CONTEXTS:
        return None
    t = parse_time(before)
    lo = (t or parse_time("now")) - INIT_LOOKBACK
    # ``context = ?`` (not a list test): an equality the archive's row-group
    # statistics and Bloom filters can skip on; and one pass gives both the
    # node's latest run and its peers' count (issue 14: each statement over
    # the archive reads every day's file of the lookback)
    params = [node, context, lo, date_floor(lo)]
    cond = ""
    if t is not None:
        cond, params = " AND start_ts <= ?", params + [t]
    found = rows(con, f"""SELECT arg_max({{'hook_id': hook_id, 'context': context, 'start_ts': start_ts,
                                         'failed': {HOOK_FAILED}}}, start_ts) FILTER (WHERE node = ?) AS mine,
                                 count(DISTINCT node) AS n, any_value(context) AS context
                          FROM hook_runs WHERE context = ? AND start_ts >= ? AND _date >= ?{cond}""",
                 params, date_floor(lo))[0]
    if found["mine"]:
        h = found["mine"]
        out = {"ran": True, "context": h["context"], "time": h["start_ts"], "failed": bool(h["failed"]),
               "hook_id": h["hook_id"], "script": None, "sha256": None, "exit_code": None, "output": None}
        if h["failed"]:
            ts = parse_time(h["start_ts"])
            s = rows(con, f"""SELECT path, sha256, exit_code, signal, timed_out, refused, output
                              FROM script_runs WHERE node = ? AND hook_id = ? AND start_ts >= ?
                                AND _date >= ? AND {SCRIPT_FAILED} ORDER BY idx LIMIT 1""",
                     [node, h["hook_id"], ts, date_floor(ts)], date_floor(ts))
            if s:
                out.update(script=s[0]["path"], sha256=s[0]["sha256"], exit_code=s[0]["exit_code"],
                           output=s[0]["output"], timed_out=s[0]["timed_out"], refused=s[0]["refused"])
        return out
    if not found["n"]:
        return None
    return {"ran": False, "context": found["context"], "peers_with_init": found["n"], "failed": None,
            "time": None}


def init_sentence(node, init) -> str | None:
    if not init:
        return None
    if init["ran"] and init["failed"]:
        what = f" {init['script']}" if init.get("script") else ""
        code = f" exited {init['exit_code']}" if init.get("exit_code") is not None else " failed"
        return (f"its boot-time {hook_name(init['context'])}{what}{code} at {init['time']}: "
                f"jobs on {node} may lack what it installs")
    if not init["ran"]:
        return (f"no boot-time init run is recorded for {node} although {init['peers_with_init']} "
                f"other node(s) have one: its {hook_name(init['context'])} never ran through hookscope")
    return None


# ---------------------------------------------------------------- stale versions
def stale_versions(con, path=None, node=None, since=None, until=None) -> list[dict]:
    """Nodes that keep running an old version (sha256) of a script after a
    newer one appeared on their peers.

    The current version of a path is the newest one (latest first run) that
    is still some node's latest: after a roll-back nobody is called stale;
    and it must be the latest on at least half the nodes, so a canary on a
    few nodes does not make the others "stale".
    A node is stale when its latest run of the path is an older version and
    came after the current version first ran elsewhere; ``lag_s`` is how long
    it had run the old one since (at least; it has not caught up)."""
    params: list = []
    flt = []
    if path is not None:
        flt.append("path = ?")
        params.append(str(path))
    if node is not None:
        # The node's own scripts, compared with every peer that ran them.
        sub: list = [str(node)]
        win = window_sql("start_ts", since, until, sub)
        flt.append(f"path IN (SELECT DISTINCT path FROM script_runs WHERE node = ?{win})")
        params += sub
    where = " AND ".join(flt) or "true"
    win = window_sql("start_ts", since, until, params)
    found = rows(con, f"""
        WITH s AS (SELECT node, path, sha256, start_ts FROM script_runs WHERE {where}{win}),
             v AS (SELECT path, sha256, min(start_ts) AS first_seen FROM s GROUP BY ALL),
             latest AS (SELECT node, path, arg_max(sha256, start_ts) AS sha256, max(start_ts) AS last_run
                        FROM s GROUP BY ALL),
             cur AS (SELECT l.path, arg_max(l.sha256, v.first_seen) AS sha256, max(v.first_seen) AS since
                     FROM latest l JOIN v ON v.path = l.path AND v.sha256 IS NOT DISTINCT FROM l.sha256
                     GROUP BY l.path),
             ncur AS (SELECT l.path, count(*) AS nodes, min(l.node) AS example FROM latest l JOIN cur c
                        ON c.path = l.path AND c.sha256 IS NOT DISTINCT FROM l.sha256 GROUP BY l.path)
        SELECT l.node, l.path, l.sha256, l.last_run, c.sha256 AS current_sha256, c.since AS current_since,
               n.nodes AS nodes_on_current, n.example AS current_example_node,
               epoch(l.last_run) - epoch(c.since) AS lag_s
        FROM latest l JOIN cur c ON c.path = l.path JOIN ncur n ON n.path = l.path
             JOIN v vo ON vo.path = l.path AND vo.sha256 IS NOT DISTINCT FROM l.sha256
             JOIN (SELECT path, count(*) AS n FROM latest GROUP BY path) t ON t.path = l.path
        WHERE l.sha256 IS DISTINCT FROM c.sha256 AND vo.first_seen < c.since AND l.last_run > c.since
          -- a canary on a few nodes leaves the rest current, not lagging
          AND n.nodes * 2 >= t.n
        ORDER BY l.path, lag_s DESC, l.node""", params, window_floor(since))
    if node is not None:
        found = [r for r in found if r["node"] == str(node)]
    for r in found:
        r["lag_s"] = round(float(r["lag_s"]), 3)
        r["lag"] = human(r["lag_s"])
    return found


def stale_sentence(r) -> str:
    return (f"{r['node']} still runs {r['path']} sha256 {r['sha256'][:12]} (last at {r['last_run']}) "
            f"although {r['nodes_on_current']} peer(s) run {r['current_sha256'][:12]} since "
            f"{r['current_since']}: lagging {r['lag']} (configless slurmd keeps its cached copy "
            f"until it restarts)")


def human(seconds) -> str:
    s = float(seconds or 0)
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.1f} s"


# ---------------------------------------------------------------- prolog timing
def prolog_timing(hooks, prolog_flags=None) -> list[dict]:
    """Per node, whether the job's Prolog ran at allocation or at its first
    step, from the records' own times: the allocation is the job's
    PrologSlurmctld start; a Prolog that began PROLOG_AT_STEP_AFTER later,
    together with a step's hooks, ran at the first step (no PrologFlags=Alloc).

    ``hooks``: the job's hook_runs rows (one attempt).  ``prolog_flags``: the
    site's PrologFlags when known (then "Alloc" settles it)."""
    ctl = [h for h in hooks if h["context"] == "prolog_slurmctld"]
    alloc = min((parse_time(h["start_ts"]) for h in ctl), default=None)
    out = []
    for p in (h for h in hooks if h["context"] == "prolog_slurmd"):
        start = parse_time(p["start_ts"])
        dur = timedelta(milliseconds=p.get("duration_ms") or 0)
        steps = [h for h in hooks if h["node"] == p["node"] and h["context"] in ("prolog_task", "prolog_srun")
                 and parse_time(h["start_ts"]) >= start]
        first_step = min((parse_time(h["start_ts"]) for h in steps), default=None)
        after = (start - alloc) if alloc else None
        if prolog_flags is not None and "alloc" in str(prolog_flags).lower():
            at, how = "allocation", "read"
        elif after is not None and after >= PROLOG_AT_STEP_AFTER:
            at, how = "first_step", "inferred"
        elif after is not None:
            at, how = "allocation", "inferred"
        else:
            at, how = "unknown", "inferred"
        matters = at == "first_step" and dur >= PROLOG_DELAY_MATTERS
        r = {"node": p["node"], "at": at, "how": how, "prolog_start": p["start_ts"],
             "allocation": iso(alloc) if alloc else None,
             "after_allocation_s": round(after.total_seconds(), 3) if after is not None else None,
             "prolog_ms": p.get("duration_ms"), "first_step_hook": iso(first_step) if first_step else None,
             "delays_step": matters}
        if matters:
            r["text"] = (f"the Prolog on {p['node']} ran at the job's first step, "
                         f"{human(after.total_seconds())} after allocation (no PrologFlags=Alloc), "
                         f"and held that step back {human(dur.total_seconds())}")
        out.append(r)
    return out
