"""``drains``: every node whose latest hook run failed, grouped by cause.

A cause is (context, script path, sha256): one broken script on 300 nodes is
one row with ``count`` 300 and the node list, not 300 rows.  Worst first
(most nodes, then most recent).
"""

from __future__ import annotations

from datetime import timedelta

from emitter import contract
from queries.scope import scoped
from queries.source import date_floor, parse_time, rows, window_floor, window_sql
from queries.audit import _prefix
from queries.views import HOOK_FAILED, SCRIPT_FAILED

MAX_NODES_LISTED = 1000
#: Where the check "did the node run a hook after its latest failure?" looks
#: first, back from the most recent failure: a node that is in use ran one
#: within hours, so older days (archive files) are read only for idle nodes.
CHECK_WINDOWS = (timedelta(days=2), timedelta(days=30), None)


def failing_nodes(con, since=None, until=None) -> dict:
    """{(cluster, node): start of its latest hook run} for the nodes whose
    latest hook run (in the window) failed.

    Failed hook runs are rare: their latest start per node is found first
    (one pass over the narrow failure columns); then each such node's latest
    start of any hook, over the most recent days first, decides it.  Only
    the first pass reads the whole window; on the archive the others read a
    few days' files (their ``_date`` bound prunes the rest).
    """
    params: list = []
    win = window_sql("start_ts", since, until, params)
    # HOOK_FAILED, written so the scan can test status before reading the
    # other columns (the same rows: NULLs fail both forms)
    sql = f"SELECT cluster, node, max(start_ts) FROM hook_runs WHERE (status <> 0 OR runner_killed){win} GROUP BY ALL"
    cands = {(c, n): t for c, n, t in con.execute(scoped(con, sql, window_floor(since)), params).fetchall()
             if c is not None and n is not None}  # NULL keys never join below
    if not cands:
        return {}
    lo_limit = parse_time(since)
    anchor = max(cands.values())
    undecided, failing = set(cands), {}
    for width in CHECK_WINDOWS:
        lo = None if width is None else anchor - width
        if lo_limit is not None and (lo is None or lo <= lo_limit):
            lo, width = lo_limit, None  # the caller's window: the last step
        p: list = [sorted({n for _c, n in undecided})]
        w = window_sql("start_ts", lo, until, p)
        sql = f"SELECT cluster, node, max(start_ts) FROM hook_runs WHERE node IN (SELECT unnest(?::VARCHAR[])){w} GROUP BY ALL"
        for c, n, t in con.execute(scoped(con, sql, window_floor(lo)), p).fetchall():
            if (c, n) in undecided:
                undecided.discard((c, n))
                if t == cands[(c, n)]:  # nothing started after the failure
                    failing[(c, n)] = t
        # A node not seen since ``lo`` failed before it: look further back.
        if not undecided or width is None:
            break
    return failing


def drains(con, since=None, until=None) -> list[dict]:
    """Nodes whose latest hook run (in the window) failed, grouped by cause."""
    failing = failing_nodes(con, since, until)
    if not failing:
        return []
    keys = sorted(failing)
    lo = min(failing.values())
    params: list = [[c for c, _ in keys], [n for _, n in keys], [failing[k] for k in keys]]
    win_h = window_sql("hr.start_ts", since, until, params).replace(" _date", " hr._date")
    # Every row below starts at or after the earliest of those hook runs:
    # on the archive, only the days from there on are read.
    params += [lo, date_floor(lo)]
    win_s = window_sql("sr.start_ts", since, None, params).replace(" _date", " sr._date")
    params += [lo, date_floor(lo)]
    sql = f"""
        WITH latest AS (
            SELECT unnest(?::VARCHAR[]) AS cluster, unnest(?::VARCHAR[]) AS node,
                   unnest(?::TIMESTAMPTZ[]) AS t),
        h AS (
            SELECT hr.* FROM hook_runs hr
            JOIN latest l ON hr.cluster = l.cluster AND hr.node = l.node AND hr.start_ts = l.t
            WHERE true{win_h} AND hr.start_ts >= ? AND hr._date >= ? AND {_prefix(HOOK_FAILED, 'hr')}
            QUALIFY row_number() OVER (PARTITION BY hr.cluster, hr.node ORDER BY hr.hook_id DESC) = 1),
        s AS (
            -- the script that decided the failure: the first failed one
            SELECT sr.* FROM script_runs sr
            JOIN h ON sr.cluster = h.cluster AND sr.node = h.node AND sr.hook_id = h.hook_id
                  AND sr.start_ts >= h.start_ts AND sr.start_ts <= h.start_ts + INTERVAL 1 DAY
            WHERE {_prefix(SCRIPT_FAILED, 'sr')}{win_s} AND sr.start_ts >= ? AND sr._date >= ?
            QUALIFY row_number() OVER (PARTITION BY sr.hook_id ORDER BY sr.idx) = 1),
        j AS (
            SELECT h.cluster, h.node, h.context, h.hook_id, h.job_id, h.user_name,
                   h.start_ts, h.runner_killed AS hook_killed, s.path, s.sha256, s.exit_code,
                   s.signal, s.timed_out, s.refused, s.output,
                   CASE WHEN s.path IS NULL THEN
                        CASE WHEN h.runner_killed THEN 'runner killed' ELSE 'hook failed, no script to blame' END
                        WHEN s.refused IS NOT NULL THEN 'refused: ' || s.refused
                        WHEN s.timed_out THEN 'timed out'
                        WHEN s.signal IS NOT NULL THEN 'signal ' || s.signal
                        WHEN s.runner_killed THEN 'runner killed'
                        ELSE 'exit ' || s.exit_code END AS failure
            FROM h LEFT JOIN s ON s.hook_id = h.hook_id)
        SELECT context, path AS script, sha256, count(*) AS count,
               list(node ORDER BY node) AS nodes,
               list(DISTINCT failure ORDER BY failure) AS failures,
               list(DISTINCT exit_code ORDER BY exit_code) FILTER (WHERE exit_code IS NOT NULL) AS exit_codes,
               min(start_ts) AS first_failure, max(start_ts) AS last_failure,
               arg_max(output, start_ts) AS sample_output,
               arg_max(job_id, start_ts) AS last_job_id,
               arg_max(node, start_ts) AS last_node,
               arg_max(user_name, start_ts) AS last_user,
               count(DISTINCT user_name) AS users,
               list(DISTINCT cluster ORDER BY cluster) AS clusters
        FROM j GROUP BY context, path, sha256
        ORDER BY count DESC, last_failure DESC, script"""
    out = rows(con, sql, params, date_floor(lo))
    from queries.outcomes import consequence

    for r in out:
        r["drain_reason"] = contract.DRAIN_REASON.get(r["context"])
        # What Slurm did to the node and the job (issue 16); no drain for
        # controller, task, srun and boot-time contexts.
        r["consequence"] = consequence(r["context"])["text"]
        if r["exit_codes"] is None:
            r["exit_codes"] = []
        if len(r["nodes"]) > MAX_NODES_LISTED:
            r["nodes_truncated"] = True
            r["nodes"] = r["nodes"][:MAX_NODES_LISTED]
    return out
