"""The audit trail: every hook run of a job, a node or a user, and a script's
versions, drift, failure rate and duration percentiles.

Each function takes a connection from :func:`queries.source.open_source` and
returns plain JSON-able data (times as ISO-8601 UTC strings).
"""

from __future__ import annotations

from queries import QueryError
from queries.source import rows, window_floor, window_sql
from queries.views import HOOK_FAILED, SCRIPT_FAILED

#: Keys of one audit row, in display order.
AUDIT_KEYS = ("start", "node", "context", "job_id", "user", "script", "sha256", "exit_code",
              "signal", "timed_out", "refused", "duration_ms", "status", "hook_id", "index",
              "cluster", "failed", "runner_killed", "output", "attested")

#: Contexts only root runs (slurmd's Prolog/Epilog, a node's init scripts): a
#: user-attested record claiming one is a user's claim, never the node's.
ROOT_CONTEXTS = ("prolog_slurmd", "epilog_slurmd", "init_worker", "init_login")


def attested_label(uid, context) -> str:
    """:func:`attested_sql` for one row already read (``why``, the dashboard)."""
    if not uid:
        return "root"
    return f"uid {uid} (claims a root context)" if context in ROOT_CONTEXTS else f"uid {uid}"


def attested_sql(alias: str) -> str:
    """SQL for who the node attests wrote a hook run (``<alias>`` a hook_runs
    or script_runs row): 'root', 'uid N' (a per-owner spool:
    TaskProlog/SrunProlog as the job's user, PrologSlurmctld as SlurmUser),
    or 'uid N (claims a root context)' when such a record names a context
    only root runs.  NULL attested_uid (older agents, direct mode) is root's
    journal.  docs/journal.md "Per-owner spools"."""
    a = alias
    ctx = ", ".join(f"'{x}'" for x in ROOT_CONTEXTS)
    return (f"CASE WHEN coalesce({a}.attested_uid, 0) = 0 THEN 'root' "
            f"WHEN {a}.context IN ({ctx}) THEN 'uid ' || {a}.attested_uid || ' (claims a root context)' "
            f"ELSE 'uid ' || {a}.attested_uid END")


def _audit_rows(con, where_h: str, where_s: str, params_h: list, params_s: list,
                since, until, limit: int | None) -> list[dict]:
    """Hook runs matching ``where_h`` with their scripts matching ``where_s``.

    Both sides are filtered on their own columns (script_runs carries the job,
    user and node too) so neither side is scanned in full for a join.
    """
    ph, ps = list(params_h), list(params_s)
    wh = where_h + window_sql("start_ts", since, until, ph)
    # Scripts of the selected hooks start at or after their hook: bound them
    # by the same window's lower edge only, so a hook on the edge keeps them.
    lo = since
    if lo is None:
        # No window: bound both sides by the selected hooks' first start, so
        # the archive reads only the days that can hold them (issue 14); the
        # hook side's bound keeps exactly the rows it had.
        lo = rows(con, f"SELECT min(start_ts) AS t FROM hook_runs WHERE {wh}", ph, window_floor(since))[0]["t"]
        if lo is None:
            return []  # no hook run matches: nothing to join scripts to
        wh += window_sql("start_ts", lo, None, ph)
    ws = where_s + window_sql("start_ts", lo, None, ps)
    lim = f" LIMIT {int(limit)}" if limit else ""
    sql = f"""
        WITH h AS (SELECT * FROM hook_runs WHERE {wh}),
             s AS (SELECT * FROM script_runs WHERE {ws} AND hook_id IN (SELECT hook_id FROM h))
        SELECT coalesce(s.start_ts, h.start_ts) AS start, h.node, h.context, h.job_id,
               h.user_name AS user, s.path AS script, s.sha256, s.exit_code, s.signal,
               s.timed_out, s.refused, round(coalesce(s.duration_ms, h.duration_ms), 3) AS duration_ms,
               h.status, h.hook_id, s.idx AS "index", h.cluster,
               coalesce({_prefix(SCRIPT_FAILED, 's')}, {_prefix(HOOK_FAILED, 'h')}) AS failed,
               coalesce(s.runner_killed, h.runner_killed, false) AS runner_killed, s.output,
               {attested_sql('h')} AS attested
        FROM h LEFT JOIN s ON s.hook_id = h.hook_id
        ORDER BY start, h.node, h.hook_id, s.idx{lim}"""
    # both sides are bounded by lo's day (queries.scope)
    out = rows(con, sql, ph + ps, window_floor(lo))
    # What Slurm did about each failure (issue 16), in Slurm's words.
    from queries.outcomes import consequence

    said: dict = {}
    for r in out:
        if r["failed"]:
            if r["context"] not in said:
                said[r["context"]] = consequence(r["context"])["text"]
            r["consequence"] = said[r["context"]]
        else:
            r["consequence"] = None
    return out


def _prefix(expr: str, alias: str) -> str:
    """Qualify the bare column names of a views.py predicate with ``alias``."""
    import re

    cols = ("exit_code", "timed_out", "refused", "runner_killed", "status")
    return re.sub(r"\b(" + "|".join(cols) + r")\b", alias + r".\1", expr)


def _where(col: str, value) -> tuple[str, list]:
    if value is None or str(value) == "":
        raise QueryError(f"an audit by {col} needs a value")
    return f"{col} = ?", [str(value)]


def audit_job(con, job_id, since=None, until=None, limit: int | None = None) -> list[dict]:
    """Every hook run of job ``job_id`` (controller and nodes), in time order."""
    w, p = _where("job_id", job_id)
    return _audit_rows(con, w, w, p, p, since, until, limit)


def audit_node(con, node, since=None, until=None, limit: int | None = None) -> list[dict]:
    """Every hook run on ``node``, in time order."""
    w, p = _where("node", node)
    return _audit_rows(con, w, w, p, p, since, until, limit)


def audit_user(con, user, since=None, until=None, limit: int | None = None) -> list[dict]:
    """Every hook run of ``user``'s jobs, in time order."""
    w, p = _where("user_name", user)
    return _audit_rows(con, w, w, p, p, since, until, limit)


def audit_script(con, path, since=None, until=None) -> dict:
    """A script's history: versions, configuration drift, per-version health.

    ``versions``: one entry per sha256, first and last time it ran, the nodes
    it ran on, runs, failures, failure rate and duration p50/p95/p99 (ms).
    ``drift``: each hour in which nodes ran different versions of the script,
    with the nodes per version.
    """
    if not path:
        raise QueryError("an audit by script needs the script's path")
    params: list = [str(path)]
    win = window_sql("start_ts", since, until, params)
    base = f"SELECT * FROM script_runs WHERE path = ?{win}"
    versions = rows(con, f"""
        WITH s AS ({base})
        SELECT sha256, min(start_ts) AS first_seen, max(start_ts) AS last_seen,
               count(*) AS runs, count(*) FILTER (WHERE {SCRIPT_FAILED}) AS failures,
               round(count(*) FILTER (WHERE {SCRIPT_FAILED}) / count(*), 6) AS failure_rate,
               round(quantile_cont(duration_ms, 0.5), 3) AS p50_ms,
               round(quantile_cont(duration_ms, 0.95), 3) AS p95_ms,
               round(quantile_cont(duration_ms, 0.99), 3) AS p99_ms,
               count(DISTINCT node) AS n_nodes, list(DISTINCT node ORDER BY node) AS nodes,
               list(DISTINCT context ORDER BY context) AS contexts
        FROM s GROUP BY sha256 ORDER BY first_seen""", params, window_floor(since))
    drift = rows(con, f"""
        WITH s AS ({base}),
             hv AS (SELECT date_trunc('hour', start_ts) AS hour, sha256,
                           list(DISTINCT node ORDER BY node) AS nodes
                    FROM s GROUP BY ALL),
             multi AS (SELECT hour FROM hv GROUP BY hour HAVING count(*) > 1)
        SELECT hour, list({{'sha256': sha256, 'nodes': nodes}} ORDER BY sha256) AS versions
        FROM hv WHERE hour IN (SELECT hour FROM multi) GROUP BY hour ORDER BY hour""", params, window_floor(since))
    total = sum(v["runs"] for v in versions)
    failures = sum(v["failures"] for v in versions)
    from queries.outcomes import stale_versions

    return {
        # nodes that keep running an old version after a newer one reached their peers
        "stale": stale_versions(con, path=str(path), since=since, until=until),
        "path": str(path),
        "runs": total,
        "failures": failures,
        "failure_rate": round(failures / total, 6) if total else None,
        "versions": versions,
        "drift": drift,
    }
