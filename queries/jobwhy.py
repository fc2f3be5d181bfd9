"""``why job J``: what happened to a job, across the controller and every node.

One paragraph (``verdict``) and the data behind it:

* ``outcome``: what Slurm did to the job, in Slurm's words ("requeued held",
  Reason "launch failed requeued held", "cancelled", "step cancelled"), with
  ``inferred`` saying what the records could not show (batch or interactive,
  ``nohold_on_prolog_fail``);
* ``decided_by``: the hook, script, version (sha256), output, node and time
  of the failure that decided it;
* ``elsewhere``: whether the same script version failed on other nodes;
* ``attempts`` and ``retry``: each run of the job (restart count), and what
  the retry after the failure did;
* ``failures``: every failed hook of the job with its own consequence;
* ``prolog_timing``, ``stale``, ``init``: a prolog that ran at the first step
  and delayed it, an old script version still run on the deciding node, and
  that node's boot-time init run.
"""

from __future__ import annotations

from datetime import timedelta

from queries import QueryError
from queries import outcomes as oc
from queries.source import date_floor, parse_time, rows
from queries.views import HOOK_FAILED, SCRIPT_FAILED

#: Contexts whose failure decides the job's fate (in the order Slurm runs them).
JOB_DECIDING = ("prolog_slurmctld", "prolog_slurmd", "prolog_srun", "prolog_task")
ELSEWHERE_WINDOW = timedelta(hours=24)
MAX_NODES_LISTED = 50


class NoSuchJob(QueryError):
    """The store has no hook run of this job."""


def _attempts(hooks):
    """Give each hook its run of the job (0, 1, ...): a run begins with the
    job's PrologSlurmctld (a second one, or one after the run's epilogs, is a
    new run), or, where PrologSlurmctld is not recorded, with a Prolog after
    the run's epilogs.  The restart count is not the boundary: Slurm counts
    the requeue before the failed run's Epilog and EpilogSlurmctld, so those
    already carry the next count (seen on the real 22.05 daemons)."""
    n, ended, ctl = -1, False, False
    for h in hooks:
        ctx = h["context"]
        if n < 0 or (ctx == "prolog_slurmctld" and (ctl or ended)) or (ctx == "prolog_slurmd" and ended):
            n, ended, ctl = n + 1, False, False
        if ctx == "prolog_slurmctld":
            ctl = True
        elif ctx in ("epilog_slurmd", "epilog_slurmctld"):
            ended = True
        h["attempt"] = n


def _failed_script(con, hook):
    t = parse_time(hook["start_ts"])
    s = rows(con, f"""SELECT path, sha256, exit_code, signal, timed_out, refused, runner_killed, output,
                             start_ts, duration_ms, idx
                      FROM script_runs WHERE node = ? AND hook_id = ? AND start_ts >= ? AND start_ts <= ?
                        AND _date >= ? AND {SCRIPT_FAILED} ORDER BY idx LIMIT 1""",
             [hook["node"], hook["hook_id"], t, t + timedelta(days=1), date_floor(t)], date_floor(t))
    return s[0] if s else None


def _what(s, hook):
    if s is None:
        return "failed (runner killed)" if hook.get("runner_killed") else f"returned {hook.get('status')}"
    if s.get("refused"):
        return f"was refused ({s['refused']})"
    if s.get("timed_out"):
        return "ran past its time budget and was killed"
    if s.get("runner_killed"):
        return "was running when the runner itself was killed"
    if s.get("signal"):
        return f"was killed by signal {s['signal']}"
    return f"exited {s.get('exit_code')}"


def _job_kind(hooks, attempts_after, deciding=None):
    """("batch"|"interactive"|None, how we know)."""
    if any((h.get("restart_count") or 0) > 0 for h in hooks) or attempts_after:
        return "batch", ("read: the job was requeued (its restart count rose above 0, or it ran again), "
                         "and only batch jobs are requeued")
    if deciding and deciding["context"] == "prolog_slurmd":
        # A batch script never starts when its Prolog fails, so an srun of
        # this run that got as far as its SrunProlog came from outside: salloc/srun.
        t = parse_time(deciding["time"]) + timedelta(minutes=1)
        if any(h["context"] == "prolog_srun" and h["attempt"] == deciding["attempt"]
               and parse_time(h["start_ts"]) <= t for h in hooks):
            return "interactive", ("inferred: an srun of the job ran its SrunProlog by the time the Prolog "
                                   "failed, and a batch script never starts when its Prolog fails")
    if deciding and deciding["context"] in ("prolog_slurmd", "prolog_slurmctld"):
        # A requeue raises the restart count the failed run's own epilogs
        # carry (seen on the real 22.05 daemons); epilogs that ran after the
        # failure without it mean Slurm did not requeue the job.
        t = parse_time(deciding["time"])
        ends = [h for h in hooks if h["attempt"] == deciding["attempt"] and parse_time(h["start_ts"]) >= t
                and h["context"] in ("epilog_slurmd", "epilog_slurmctld")]
        if ends and not any((h.get("restart_count") or 0) > 0 for h in ends):
            return "interactive", ("inferred: the epilogs that ran after the failure carry no raised restart "
                                   "count, which a requeue sets: Slurm did not requeue the job, as for an "
                                   "interactive job (salloc, srun) or one it cannot requeue")
    return None, None


def _elsewhere(con, node, s, when):
    if not s or not s.get("script"):
        return None
    t = parse_time(when)
    lo, hi = t - ELSEWHERE_WINDOW, t + ELSEWHERE_WINDOW
    per = rows(con, f"""SELECT node, count(*) FILTER (WHERE {SCRIPT_FAILED}) AS failures
                        FROM script_runs WHERE path = ? AND sha256 IS NOT DISTINCT FROM ?
                          AND start_ts >= ? AND start_ts <= ? AND _date >= ? GROUP BY node""",
               [s["script"], s["sha256"], lo, hi, date_floor(lo)], date_floor(lo))
    failed = sorted(r["node"] for r in per if r["failures"] and r["node"] != node)
    ok = sorted(r["node"] for r in per if not r["failures"] and r["node"] != node)
    # As why NODE counts it: a script fault when at least half the nodes
    # that ran this version (this one included) failed it.
    ran = len(failed) + len(ok) + 1
    fault = "script" if failed and (len(failed) + 1) * 2 >= ran else ("node" if ok else "unknown")
    return {"failed_nodes": failed[:MAX_NODES_LISTED], "failed_count": len(failed), "ok_count": len(ok),
            "fault": fault, "window": [oc.iso(lo), oc.iso(hi)]}


def why_job(con, job_id, since=None, until=None, scheduler_parameters=None, prolog_flags=None) -> dict:
    """Explain what happened to job ``job_id`` (see the module doc)."""
    if job_id is None or str(job_id).strip() == "":
        raise QueryError("why job needs a job ID")
    job_id = str(job_id).strip()
    params = [job_id]
    from queries.source import window_floor, window_sql

    win = window_sql("start_ts", since, until, params)
    hooks = rows(con, f"""SELECT hook_id, node, context, start_ts, end_ts, duration_ms, status, restart_count,
                                 runner_killed, user_name, partition, job_name, cluster, {HOOK_FAILED} AS failed
                          FROM hook_runs WHERE job_id = ?{win} ORDER BY start_ts, node""", params,
                 window_floor(since))
    if not hooks:
        raise NoSuchJob(f"the store has no hook run of job {job_id}: check the ID (as squeue/sacct show it) "
                        f"and the --since/--until window")
    _attempts(hooks)
    nohold = oc.nohold_setting(scheduler_parameters)
    failures = []
    for h in hooks:
        if not h["failed"]:
            continue
        s = _failed_script(con, h)
        failures.append({"attempt": h["attempt"], "context": h["context"], "hook": oc.hook_name(h["context"]),
                         "node": h["node"], "time": (s or {}).get("start_ts") or h["start_ts"],
                         "hook_id": h["hook_id"], "script": (s or {}).get("path"),
                         "sha256": (s or {}).get("sha256"), "exit_code": (s or {}).get("exit_code"),
                         "signal": (s or {}).get("signal"), "timed_out": bool((s or {}).get("timed_out")),
                         "refused": (s or {}).get("refused"), "output": (s or {}).get("output"),
                         "runner_killed": bool(h.get("runner_killed") or (s or {}).get("runner_killed")),
                         "what": _what(s, h)})
    deciding = _deciding(failures)
    last_attempt = max(h["attempt"] for h in hooks)
    later = [h for h in hooks if deciding and h["attempt"] > deciding["attempt"]]
    kind, kind_how = _job_kind(hooks, bool(later), deciding)
    outcome = None
    if deciding:
        outcome = oc.consequence(deciding["context"], kind, nohold)
        if kind_how:
            outcome["kind"] = {"value": kind, "how": kind_how}
            if kind_how.startswith("inferred"):
                outcome["inferred"].append(kind_how[len("inferred: "):])
        if deciding["context"] == "prolog_slurmctld" and not later and kind != "batch":
            outcome["job"] = "cancelled"
            outcome["inferred"] = ["no retry is recorded after the PrologSlurmctld failure: an interactive job "
                                   "(salloc, srun) is cancelled, and so is a batch job Slurm cannot requeue "
                                   "(--no-requeue, JobRequeue=0)"]
            outcome["text"] = "the job is cancelled (srun prints 'PrologSlurmctld failed, job killed')"
        if nohold is None and deciding["context"] == "prolog_slurmd" and later:
            # A held job runs again only once released: the retry tells one
            # of the two happened, not which.
            outcome["job"], outcome["reason"] = "requeued", None
            outcome["inferred"] = [x for x in outcome["inferred"] if "nohold" not in x] + [
                "requeued and run again: held and then released (scontrol release), or not held "
                "(nohold_on_prolog_fail); the records cannot tell which"]
            outcome["text"] = outcome["text"].replace("requeued held (Reason 'launch failed requeued held')",
                                                      "requeued")
    retry = _retry(hooks, deciding, later)
    elsewhere = _elsewhere(con, deciding["node"], deciding, deciding["time"]) if deciding else None
    attempt_hooks = [h for h in hooks if h["attempt"] == (deciding["attempt"] if deciding else last_attempt)]
    timing = oc.prolog_timing(attempt_hooks, prolog_flags)
    stale = init = None
    if deciding and deciding.get("script"):
        stale = [r for r in oc.stale_versions(con, path=deciding["script"], since=None, until=until)
                 if r["node"] == deciding["node"]]
    if deciding:
        init = oc.init_status(con, deciding["node"], before=deciding["time"],
                              context=oc.INIT_FOR.get(deciding["context"]))
    meta = {"user": next((h["user_name"] for h in hooks if h.get("user_name")), None),
            "job_name": next((h["job_name"] for h in hooks if h.get("job_name")), None),
            "partition": next((h["partition"] for h in hooks if h.get("partition")), None),
            "cluster": hooks[0]["cluster"], "nodes": sorted({h["node"] for h in hooks}),
            "first_hook": hooks[0]["start_ts"], "last_hook": hooks[-1]["start_ts"]}
    out = {"job_id": job_id, "meta": meta, "outcome": outcome, "decided_by": deciding,
           "elsewhere": elsewhere, "attempts": _attempt_rows(hooks, failures), "retry": retry,
           "failures": failures, "prolog_timing": timing, "stale": stale or [], "init": init,
           "settings": {"scheduler_parameters": scheduler_parameters, "prolog_flags": prolog_flags}}
    out["verdict"] = _verdict(out)
    return out


def _deciding(failures):
    """The failure that decided the job: the first job-deciding one of the
    latest attempt that had one, else the latest logged-only failure."""
    deciding = [f for f in failures if f["context"] in JOB_DECIDING]
    if deciding:
        last = max(f["attempt"] for f in deciding)
        return next(f for f in deciding if f["attempt"] == last)
    return failures[-1] if failures else None


def _retry(hooks, deciding, later):
    if not deciding:
        return None
    if not later:
        return {"attempt": None, "ran": False}
    nxt = min(h["attempt"] for h in later)
    hs = [h for h in later if h["attempt"] == nxt]
    failed = [h for h in hs if h["failed"]]
    start = parse_time(hs[0]["start_ts"])
    return {"attempt": nxt, "restart_count": hs[0].get("restart_count"), "ran": True, "start": hs[0]["start_ts"],
            "after_s": round((start - parse_time(deciding["time"])).total_seconds(), 3),
            "nodes": sorted({h["node"] for h in hs}), "hooks": len(hs), "failed_hooks": len(failed),
            "failed": [{"node": h["node"], "context": h["context"]} for h in failed],
            "attempts_after": len({h["attempt"] for h in later})}


def _attempt_rows(hooks, failures):
    out = []
    for a in sorted({h["attempt"] for h in hooks}):
        hs = [h for h in hooks if h["attempt"] == a]
        out.append({"attempt": a, "restart_count": hs[0].get("restart_count"),
                    "start": hs[0]["start_ts"], "nodes": sorted({h["node"] for h in hs}), "hooks": len(hs),
                    "failed": [f["hook"] + " on " + f["node"] for f in failures if f["attempt"] == a]})
    return out


def _verdict(d) -> str:
    j, dec, out = d["job_id"], d["decided_by"], d["outcome"]
    who = f" (user {d['meta']['user']})" if d["meta"].get("user") else ""
    if dec is None:
        n = sum(a["hooks"] for a in d["attempts"])
        return (f"Job {j}{who}: all {n} hook run(s) on {', '.join(d['meta']['nodes'])} succeeded; "
                f"no hook decided its fate"
                + "".join(f"; {t['text']}" for t in d.get("prolog_timing") or [] if t.get("delays_step")) + ".")
    script = dec["script"] or "the hook (no script to blame)"
    sha = f" [sha256 {dec['sha256'][:12]}]" if dec.get("sha256") else ""
    rc0 = next((a["restart_count"] for a in d["attempts"] if a["attempt"] == dec["attempt"]), None)
    attempt = (f" on run {dec['attempt']}" + (f" (restart count {rc0})" if rc0 is not None else "")
               if len(d["attempts"]) > 1 else "")
    parts = [f"Job {j}{who}{attempt}: the {dec['hook']} on {dec['node']} failed: {script}{sha} "
             f"{dec['what']} at {dec['time']}"]
    if dec.get("output"):
        line = dec["output"].strip().splitlines()[-1] if dec["output"].strip() else ""
        if line:
            parts[0] += f" (output: {line[:160]!r})"
    if out and out.get("text"):
        parts.append(out["text"])
    e = d.get("elsewhere")
    if e:
        if e["failed_count"]:
            parts.append(f"the same version failed on {e['failed_count']} other node(s) "
                         f"({', '.join(e['failed_nodes'][:5])}{' …' if e['failed_count'] > 5 else ''}): "
                         f"{e['fault']} fault")
        elif e["ok_count"]:
            parts.append(f"it failed nowhere else ({e['ok_count']} other node(s) ran it fine): node fault")
        else:
            parts.append("no other node ran this version")
    r = d.get("retry")
    if r and r["ran"]:
        res = "and its hooks all succeeded" if not r["failed_hooks"] else \
            f"and {r['failed_hooks']} of its hooks failed again"
        rc = r["restart_count"] if r.get("restart_count") is not None else r["attempt"]
        parts.append(f"the retry (restart count {rc}) started {oc.human(r['after_s'])} later on "
                     f"{', '.join(r['nodes'])} {res}")
    elif r is not None and out and out.get("job") == "requeued held":
        parts.append(f"no retry is recorded: the job stays held until 'scontrol release {j}'")
    elif r is not None and out and out.get("job") == "requeued":
        parts.append("no retry is recorded yet")
    for t in d.get("prolog_timing") or []:
        if t.get("delays_step"):
            parts.append(t["text"])
    for s in d.get("stale") or []:
        parts.append(oc.stale_sentence(s))
    init = oc.init_sentence(dec["node"], d.get("init"))
    if init:
        parts.append(init)
    if out and out.get("inferred"):
        parts.append("inferred: " + "; ".join(out["inferred"]))
    return "; ".join(parts) + "."


def render_job(d) -> str:
    """The human form of why_job (the CLI's default output)."""
    from queries.table import kv, render, short_sha

    out = [d["verdict"], ""]
    o, dec = d["outcome"], d["decided_by"]
    if dec:
        out += ["decided by:", _indent(kv({**dec, "sha256": short_sha(dec["sha256"])},
                                          ["time", "hook", "node", "script", "sha256", "exit_code", "signal",
                                           "timed_out", "refused"]))]
        if dec.get("output"):
            out += ["output:", _indent(dec["output"].rstrip())]
    if o:
        out += ["", "outcome:", _indent(kv(o, ["job", "reason", "node", "drain_reason", "scope"]))]
        for x in o.get("inferred") or []:
            out.append(f"  inferred: {x}")
    if len(d["attempts"]) > 1 or d["failures"]:
        out += ["", "runs:", render([{**a, "nodes": ", ".join(a["nodes"]), "failed": "; ".join(a["failed"])}
                                     for a in d["attempts"]],
                                    ["attempt", "restart_count", "start", "hooks", "nodes", "failed"])]
    return "\n".join(out)


def _indent(text, pad="  "):
    return "\n".join(pad + line for line in str(text).splitlines())
