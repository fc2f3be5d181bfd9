"""Page data: one function per dashboard page, each returning a plain JSON-able
dict.  The HTML page and its JSON twin are both rendered from that dict, so
they cannot disagree.

The store is opened, and audit rows, ``why`` verdicts and drains come, from
the queries library (it owns that analysis); charts use bound-parameter SQL
over the store tables here.
Every user-supplied value reaches DuckDB as a bound parameter; the only
strings formatted into SQL are the constant metric column names
(dashboards/common.py).
"""

from datetime import timedelta

from dashboards.common import (  # noqa: F401  (re-exported: pages, server, report and tests use data.X)
    DEFAULT_WINDOW, FAILED_SQL, GPU_METRICS, JOB_META, MAX_POINTS, BadRequest, NotFound, StoreUnavailable,
    _bucket_seconds, _gpu_series, _jsonable, _one, _rows, _status_sql, _window, open_store, parse_time)
from dashboards.jobdata import job_page
from queries import scope
from queries.audit import audit_script
from queries.drains import drains as drain_groups
from queries.why import why as why_node


# ---------------------------------------------------------------- overview
def overview(con, since=None, until=None):
    since_t, until_t = _window(con, since, until)
    w = [since_t, until_t]
    bucket = _bucket_seconds(since_t, until_t, target=240)
    totals = _one(con, f"""
        SELECT count(*) AS hook_runs, count(*) FILTER ({_status_sql()}) AS failed_hooks,
               count(DISTINCT job_id) AS jobs, count(DISTINCT node) AS nodes
        FROM hook_runs WHERE start_ts >= ? AND start_ts < ?""", w)
    series = con.execute(f"""
        SELECT floor(epoch(start_ts) / ?) * ? AS t, count(*) AS runs,
               count(*) FILTER ({_status_sql()}) AS failures
        FROM hook_runs WHERE start_ts >= ? AND start_ts < ? GROUP BY 1 ORDER BY 1""",
                         [bucket, bucket, *w]).fetchall()
    latency = _rows(con, f"""
        SELECT context, count(*) AS runs, count(*) FILTER ({_status_sql()}) AS failures,
               round(quantile_cont(duration_ms, 0.5), 1) AS p50_ms,
               round(quantile_cont(duration_ms, 0.99), 1) AS p99_ms
        FROM hook_runs WHERE start_ts >= ? AND start_ts < ? GROUP BY context ORDER BY context""", w)
    scripts = _rows(con, f"""
        SELECT path, count(*) AS runs, count(*) FILTER ({FAILED_SQL}) AS failures,
               round(count(*) FILTER ({FAILED_SQL}) / count(*), 4) AS failure_rate,
               round(quantile_cont(duration_ms, 0.5), 1) AS p50_ms,
               round(quantile_cont(duration_ms, 0.99), 1) AS p99_ms,
               round(max(duration_ms), 1) AS max_ms
        FROM script_runs WHERE start_ts >= ? AND start_ts < ? GROUP BY path""", w)
    slowest = sorted(scripts, key=lambda r: (-(r["p99_ms"] or 0), r["path"]))[:10]
    failing = sorted((r for r in scripts if r["failures"]),
                     key=lambda r: (-r["failures"], -r["failure_rate"], r["path"]))[:10]
    return {
        "page": "overview",
        "window": {"since": _jsonable(since_t), "until": _jsonable(until_t), "bucket_s": bucket},
        "totals": totals,
        "runs_over_time": {"t": [r[0] for r in series], "runs": [r[1] for r in series],
                           "failures": [r[2] for r in series]},
        "latency": latency,
        "slowest_scripts": slowest,
        "failing_scripts": failing,
        "problems": problem_nodes(con, since_t, until_t),
    }


#: why() costs ~0.1 s per node on a 10M-run store, so the overview asks it once
#: per drain group (one broken script on 300 nodes is one row) and for the
#: first few nodes drained without a failing hook; the node page has the rest.
MAX_GROUPS = 5
MAX_EVENT_VERDICTS = 3


def _why_verdict(why_fn, con, node, since, until):
    try:
        return (why_fn(con, node, since=since, until=until) or {}).get("verdict")
    except Exception as exc:  # one node's analysis must not take the overview down
        return f"(why failed for {node}: {exc})"


def _why_on_cursor(con, why_fn, node, since, until):
    cur = scope.cursor(con)  # a DuckDB connection is not for concurrent use; its cursors are
    try:
        return _why_verdict(why_fn, cur, node, since, until)
    finally:
        cur.close()


def problem_nodes(con, since, until):
    """Drained and failing nodes: drain groups (nodes whose latest hook failed,
    grouped by cause) and nodes drained with no failing hook, each row with a
    ``why`` verdict (for a group: of its most recently failed node).

    The why() calls run a few at a time beside drains(): each is a handful of
    small scans that leave most of DuckDB's threads idle.  The newest drained
    nodes are asked before drains() says whether they belong to a group; the
    rows do not depend on that timing."""
    from concurrent.futures import ThreadPoolExecutor

    drains_fn, why_fn = drain_groups, why_node
    events = _rows(con, """
        SELECT node, arg_max(state, ts) AS state, arg_max(reason, ts) AS reason, max(ts) AS time
        FROM node_events WHERE ts >= ? AND ts < ? GROUP BY node ORDER BY max(ts) DESC, node""", [since, until])
    drained = [e for e in events if str(e["state"] or "").upper().startswith(("DRAIN", "DOWN", "FAIL"))]
    asked = {}
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="why") as pool:
        def ask(node):
            if node not in asked:
                asked[node] = pool.submit(_why_on_cursor, con, why_fn, node, since, until)

        for e in drained[:MAX_EVENT_VERDICTS]:
            ask(e["node"])
        groups = drains_fn(con, since=since, until=until) or []
        out = []
        for g in groups[:MAX_GROUPS]:
            nodes = list(g.get("nodes") or [])
            rep = g.get("last_node")
            if rep is None and nodes:
                newest = _one(con, "SELECT node FROM hook_runs WHERE list_contains(?, node) "
                                   "AND start_ts >= ? AND start_ts < ? ORDER BY start_ts DESC LIMIT 1",
                              [nodes, since, until])
                rep = newest["node"] if newest else nodes[0]
            if rep:
                ask(rep)
            out.append({"kind": "hook", "nodes": nodes, "count": g.get("count", len(nodes)),
                        "context": g.get("context"), "script": g.get("script"), "sha256": g.get("sha256"),
                        "failures": g.get("failures"), "state": None, "reason": g.get("drain_reason"),
                        "verdict_node": rep, "verdict": None})
        seen = {n for g in groups for n in g.get("nodes") or []}
        states = {e["node"]: e for e in events}
        for r in out:
            st = [states[n]["state"] for n in r["nodes"] if n in states]
            r["state"] = st[0] if st and len(set(st)) == 1 else ("mixed" if st else None)
        for k, e in enumerate(e for e in drained if e["node"] not in seen):
            rep = e["node"] if k < MAX_EVENT_VERDICTS else None
            if rep:
                ask(rep)
            out.append({"kind": "event", "nodes": [e["node"]], "count": 1, "context": None, "script": None,
                        "sha256": None, "failures": None, "state": e["state"], "reason": e["reason"],
                        "verdict_node": rep, "verdict": None})
        for r in out:
            if r["verdict_node"]:
                r["verdict"] = asked[r["verdict_node"]].result()
    return out


# ---------------------------------------------------------------- job
def job(con, job_id):
    """The job page's data (dashboards/jobdata.py: hooks, scripts, audit,
    GPU series, and the ``why job`` verdict)."""
    return job_page(con, job_id)


# ---------------------------------------------------------------- node
def node(con, node_name, since=None, until=None):
    node_name = str(node_name).strip()
    known = con.execute("""
        SELECT (SELECT count(*) FROM (SELECT 1 FROM hook_runs WHERE node = ? LIMIT 1))
             + (SELECT count(*) FROM (SELECT 1 FROM gpu_samples WHERE node = ? LIMIT 1))
             + (SELECT count(*) FROM (SELECT 1 FROM node_events WHERE node = ? LIMIT 1))""",
                        [node_name] * 3).fetchone()[0]
    if not known:
        raise NotFound(f"node {node_name} has no hook runs, GPU samples or events in the store")
    # the node's newest data is a hook run or a GPU sample (a drained node runs no hooks,
    # its GPUs go on reporting)
    since_t, until_t = _window(con, since, until, table="(SELECT node, start_ts FROM hook_runs UNION ALL "
                               "SELECT node, ts FROM gpu_samples) AS node_data",
                               where="WHERE node = ?", params=[node_name])
    w = [node_name, since_t, until_t]
    bucket = _bucket_seconds(since_t, until_t, target=240)
    series = con.execute(f"""
        SELECT floor(epoch(start_ts) / ?) * ? AS t, count(*), count(*) FILTER ({_status_sql()})
        FROM hook_runs WHERE node = ? AND start_ts >= ? AND start_ts < ? GROUP BY 1 ORDER BY 1""",
                         [bucket, bucket, *w]).fetchall()
    hooks = _rows(con, """
        SELECT hook_id, job_id, context, start_ts AS start, duration_ms, status, n_scripts,
               failed_index, user_name AS user, attested_uid
        FROM hook_runs WHERE node = ? AND start_ts >= ? AND start_ts < ?
        ORDER BY start_ts DESC LIMIT 200""", w)
    from queries.audit import attested_label

    for h in hooks:
        # Who the node attests wrote the record: root's journal or a per-owner
        # spool (docs/journal.md "Per-owner spools").
        h["attested"] = attested_label(h.pop("attested_uid", None), h.get("context"))
    failures = _rows(con, f"""
        SELECT job_id, context, path AS script, sha256, exit_code, signal, timed_out, refused,
               start_ts AS start, duration_ms, output
        FROM script_runs WHERE node = ? AND start_ts >= ? AND start_ts < ? AND {FAILED_SQL}
        ORDER BY start_ts DESC LIMIT 50""", w)
    events = _rows(con, """
        SELECT ts AS time, state, reason, source FROM node_events
        WHERE node = ? ORDER BY ts DESC LIMIT 50""", [node_name])
    try:
        why = why_node(con, node_name, since=since_t, until=until_t)
    except Exception as exc:  # e.g. a node known only from GPU samples
        why = {"node": node_name, "verdict": None, "error": str(exc)}
    return {"page": "node", "node": node_name,
            "window": {"since": _jsonable(since_t), "until": _jsonable(until_t), "bucket_s": bucket},
            "runs_over_time": {"t": [r[0] for r in series], "runs": [r[1] for r in series],
                               "failures": [r[2] for r in series]},
            "hooks": hooks, "failures": failures, "events": events, "why": _jsonable(why),
            "gpu": _gpu_series(con, "node = ?", [node_name], since_t, until_t)}


# ---------------------------------------------------------------- script
def script(con, path, since=None, until=None):
    path = str(path or "")
    if not path:
        raise BadRequest("which script? pass ?path=/etc/slurm/prolog.d/NAME")
    since_t, until_t = _window(con, since, until, table="script_runs", where="WHERE path = ?",
                               params=[path])
    w = [path, since_t, until_t]
    versions = _rows(con, f"""
        SELECT sha256, min(start_ts) AS first_seen, max(start_ts) AS last_seen, count(*) AS runs,
               count(*) FILTER ({FAILED_SQL}) AS failures,
               round(count(*) FILTER ({FAILED_SQL}) / count(*), 4) AS failure_rate,
               round(quantile_cont(duration_ms, 0.5), 1) AS p50_ms,
               round(quantile_cont(duration_ms, 0.95), 1) AS p95_ms,
               round(quantile_cont(duration_ms, 0.99), 1) AS p99_ms,
               count(DISTINCT node) AS nodes
        FROM script_runs WHERE path = ? AND start_ts >= ? AND start_ts < ?
        GROUP BY sha256 ORDER BY min(start_ts)""", w)
    if not versions:
        exists = con.execute("SELECT 1 FROM script_runs WHERE path = ? LIMIT 1", [path]).fetchone()
        if not exists:
            raise NotFound(f"script {path} has never run according to the store")
    bucket = _bucket_seconds(since_t, until_t, target=200)
    shas = [v["sha256"] for v in versions]
    counts = con.execute("""
        SELECT floor(epoch(start_ts) / ?) * ? AS t, sha256, count(*)
        FROM script_runs WHERE path = ? AND start_ts >= ? AND start_ts < ? GROUP BY ALL ORDER BY 1""",
                         [bucket, bucket, *w]).fetchall()
    t = sorted({r[0] for r in counts})
    pos = {v: i for i, v in enumerate(t)}
    per = {s: [0] * len(t) for s in shas}
    for ts, sha, n in counts:
        per[sha][pos[ts]] = n
    latest = _rows(con, """
        SELECT node, arg_max(sha256, start_ts) AS sha256, max(start_ts) AS last_run
        FROM script_runs WHERE path = ? AND start_ts >= ? AND start_ts < ?
        GROUP BY node ORDER BY node""", w)
    tally = {}
    for r in latest:
        tally[r["sha256"]] = tally.get(r["sha256"], 0) + 1
    # The version most nodes run now is the reference; everyone else differs.
    majority = max(tally, key=lambda s: (tally[s], s)) if tally else None
    different = [r for r in latest if r["sha256"] != majority]
    failures = _rows(con, f"""
        SELECT node, job_id, context, sha256, exit_code, signal, timed_out, refused,
               start_ts AS start, duration_ms, output
        FROM script_runs WHERE path = ? AND start_ts >= ? AND start_ts < ? AND {FAILED_SQL}
        ORDER BY start_ts DESC LIMIT 50""", w)
    audit = audit_script(con, path, since_t, until_t)
    return {"page": "script", "path": path,
            "window": {"since": _jsonable(since_t), "until": _jsonable(until_t), "bucket_s": bucket},
            "versions": versions, "versions_over_time": {"t": t, "counts": [per[s] for s in shas]},
            "majority_sha256": majority, "nodes_latest": latest, "nodes_different": different,
            "failures": failures, "audit": _jsonable(audit)}


# ---------------------------------------------------------------- search
def search(con, q):
    q = str(q or "").strip()
    if not q:
        return {"page": "search", "q": q, "jobs": [], "nodes": [], "scripts": []}
    if len(q) > 512:
        raise BadRequest("search text too long (512 characters at most)")
    jobs = _rows(con, """
        SELECT job_id, any_value(job_name) AS job_name, any_value(user_name) AS user,
               min(start_ts) AS start FROM hook_runs
        WHERE job_id = ? OR contains(lower(job_name), lower(?)) GROUP BY job_id
        ORDER BY (job_id = ?) DESC, min(start_ts) DESC LIMIT 20""", [q, q, q])
    nodes = _rows(con, """
        SELECT node, count(*) AS hook_runs FROM hook_runs WHERE contains(lower(node), lower(?))
        GROUP BY node ORDER BY (node = ?) DESC, node LIMIT 20""", [q, q])
    scripts = _rows(con, """
        SELECT path, count(*) AS runs FROM script_runs WHERE contains(lower(path), lower(?))
        GROUP BY path ORDER BY (path = ?) DESC, path LIMIT 20""", [q, q])
    return {"page": "search", "q": q, "jobs": jobs, "nodes": nodes, "scripts": scripts}


# ---------------------------------------------------------------- summary (make demo)
def summary(con):
    """Jobs, hook runs and drained nodes with their verdicts, for a one-paragraph summary."""
    t = _one(con, "SELECT count(DISTINCT job_id) AS jobs, count(*) AS hook_runs, "
                  f"count(*) FILTER ({_status_sql()}) AS failed_hooks, min(start_ts) AS since, "
                  "max(start_ts) AS until FROM hook_runs")
    nodes = []
    if t and t["hook_runs"]:
        since = parse_time(t["since"]) - timedelta(seconds=1)
        until = parse_time(t["until"]) + timedelta(seconds=1)
        nodes = problem_nodes(con, since, until)
    return {**(t or {}), "problems": nodes}


def summary_text(s, url=None):
    """The paragraph ``make demo`` prints after its run."""
    parts = [f"{s.get('jobs', 0)} jobs ran {s.get('hook_runs', 0)} hook runs "
             f"({s.get('failed_hooks', 0)} failed)."]
    problems = s.get("problems") or []
    if problems:
        for p in problems:
            who = ", ".join(p["nodes"][:5]) + (f" and {len(p['nodes']) - 5} more" if len(p["nodes"]) > 5 else "")
            state = f" ({str(p['state']).lower()})" if p.get("state") else ""
            parts.append(f"{who}{state}: {p.get('verdict') or 'see the node page for the verdict'}")
    else:
        parts.append("No node is drained or failing its hooks.")
    if url:
        parts.append(f"Dashboard: {url}")
    return " ".join(parts)
