"""The documented SQL views over the store, for the queries and for users.

``hookscope audit views`` prints them; paste the output into the DuckDB CLI
(after ``ATTACH 'hookscope.duckdb' AS store (READ_ONLY)`` and ``USE store``,
or against any connection that has the store's tables) to write your own SQL.
Every view reads only the store's tables (``collector/schema.py``), so the
same SQL works over a DuckDB file and over the Parquet archive.
"""

from __future__ import annotations

from emitter import contract

_DRAIN_CASE = "CASE context " + " ".join(
    f"WHEN '{ctx}' THEN '{reason}'" for ctx, reason in contract.DRAIN_REASON.items()) + " END"
_HOOK_DRAIN_REASONS = ", ".join(f"'{r}'" for r in sorted(set(contract.DRAIN_REASON.values())))

#: A script run failed when it exited non-zero, was killed by a signal, ran
#: past its budget, was refused (unsafe permissions, not executable) or its
#: runner was killed while it ran.
SCRIPT_FAILED = ("((exit_code IS NOT NULL AND exit_code <> 0) OR coalesce(timed_out, false)"
                 " OR refused IS NOT NULL OR coalesce(runner_killed, false))")
#: A hook run failed when it returned non-zero to Slurm or its runner died.
HOOK_FAILED = "((status IS NOT NULL AND status <> 0) OR coalesce(runner_killed, false))"

#: (name, one-line documentation, SELECT ...) in dependency order.
VIEWS: list[tuple[str, str, str]] = [
    ("v_hook_runs",
     "Every hook run, with `failed` and the Slurm drain reason its failure causes (NULL: no drain).",
     f"SELECT *, {HOOK_FAILED} AS failed, {_DRAIN_CASE} AS drain_reason FROM hook_runs"),
    ("v_script_runs",
     "Every script run, with `failed` (non-zero, signal, timeout, refused, runner killed) and its hour.",
     f"SELECT *, {SCRIPT_FAILED} AS failed, date_trunc('hour', start_ts) AS hour, "
     f"{_DRAIN_CASE} AS drain_reason FROM script_runs"),
    ("v_failures",
     "Failed script runs only.",
     "SELECT * FROM v_script_runs WHERE failed"),
    ("v_audit",
     "The audit trail: one row per script run (hooks that ran no script get one row with NULL script).",
     "SELECT h.cluster, h.node, h.context, h.job_id, h.user_name AS user, h.hook_id, "
     "h.status AS hook_status, h.runner_killed AS hook_runner_killed, s.idx, s.path AS script, "
     "s.sha256, s.exit_code, s.signal, s.timed_out, s.refused, "
     "coalesce(s.start_ts, h.start_ts) AS start, coalesce(s.duration_ms, h.duration_ms) AS duration_ms, "
     "s.output, coalesce(s.failed, h.failed) AS failed "
     "FROM v_hook_runs h LEFT JOIN v_script_runs s ON s.hook_id = h.hook_id"),
    ("v_latest_hook_per_node",
     "The most recent hook run of each node (any context).",
     "SELECT h.* FROM v_hook_runs h JOIN "
     "(SELECT cluster, node, max(start_ts) AS t FROM hook_runs GROUP BY cluster, node) l "
     "ON h.cluster = l.cluster AND h.node = l.node AND h.start_ts = l.t "
     "QUALIFY row_number() OVER (PARTITION BY h.cluster, h.node ORDER BY h.hook_id DESC) = 1"),
    ("v_failing_nodes",
     "Nodes whose latest hook run failed, with the script that decided the failure (the first failed one).",
     "SELECT h.cluster, h.node, h.context, h.hook_id, h.job_id, h.user_name, h.start_ts, h.status, "
     "h.runner_killed, h.drain_reason, s.path, s.sha256, s.exit_code, s.signal, s.timed_out, "
     "s.refused, s.output, s.start_ts AS script_start_ts "
     "FROM (SELECT * FROM v_latest_hook_per_node WHERE failed) h "
     "LEFT JOIN LATERAL (SELECT * FROM v_failures f WHERE f.cluster = h.cluster AND f.node = h.node "
     "  AND f.hook_id = h.hook_id AND f.start_ts >= h.start_ts "
     "  AND f.start_ts <= h.start_ts + INTERVAL 1 DAY ORDER BY f.idx LIMIT 1) s ON true"),
    ("v_script_versions",
     "Each (script, sha256): first/last run, runs, failures, failure rate, nodes, duration p50/p95/p99 (ms).",
     "SELECT path, sha256, min(start_ts) AS first_seen, max(start_ts) AS last_seen, count(*) AS runs, "
     "count(*) FILTER (WHERE failed) AS failures, "
     "round(count(*) FILTER (WHERE failed) / count(*), 6) AS failure_rate, "
     "count(DISTINCT node) AS n_nodes, "
     "quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.95) AS p95_ms, "
     "quantile_cont(duration_ms, 0.99) AS p99_ms "
     "FROM v_script_runs GROUP BY path, sha256"),
    ("v_drift",
     "Configuration drift: hours in which nodes ran different versions of the same script.",
     "SELECT path, hour, count(DISTINCT sha256) AS n_versions, list(DISTINCT sha256) AS versions, "
     "count(DISTINCT node) AS n_nodes FROM v_script_runs GROUP BY path, hour "
     "HAVING count(DISTINCT sha256) > 1"),
    ("v_node_events",
     "Node state changes observed by the controller-side runner or the agent; "
     "`hook_drain` is true when Slurm's reason is a hook failure (Prolog/Epilog error).",
     f"SELECT *, coalesce(reason IN ({_HOOK_DRAIN_REASONS}), false) AS hook_drain FROM node_events"),
    ("v_gpu_signals",
     "GPU samples that show trouble: an XID, uncorrected ECC errors, throttling or >= 85 C.",
     "SELECT * FROM gpu_samples WHERE coalesce(xid, 0) <> 0 OR coalesce(ecc_dbe, 0) > 0 "
     "OR coalesce(throttle_reasons, 0) <> 0 OR coalesce(temperature_c, 0) >= 85"),
    ("v_journal_chains",
     "Per node and chain (a re-created journal starts a new chain): how many journal "
     "records the store holds, first and last position.",
     "SELECT cluster, node, chain, count(*) AS records, min(seq) AS first_seq, max(seq) AS last_seq, "
     "max(seq) - min(seq) + 1 - count(*) AS missing FROM journal GROUP BY cluster, node, chain"),
]


def create_views(con) -> None:
    """Create every view on ``con`` (which must hold the store's tables)."""
    for name, _doc, sql in VIEWS:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def views_sql() -> str:
    """The views as a documented SQL script (what ``hookscope audit views`` prints)."""
    out = ["-- hookscope views over the store (collector/schema.py tables).",
           "-- Run against a connection where the store's tables are visible, e.g.",
           "--   duckdb -readonly /var/lib/hookscope/hookscope.snapshot.duckdb < views.sql",
           ""]
    for name, doc, sql in VIEWS:
        out.append(f"-- {name}: {doc}")
        out.append(f"CREATE OR REPLACE TEMP VIEW {name} AS\n  {sql};")
        out.append("")
    return "\n".join(out)
