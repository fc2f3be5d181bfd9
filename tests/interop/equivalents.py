"""``drains``, ``why <node>`` and ``audit job <id>`` written for each engine.

The reference is hookscope's own query library over DuckDB
(:func:`reference`); each engine gets the same questions in its own idiom,
over tables it read from the archive with its defaults (deduplicated on
``schema.KEYS``, lowest ``stream_seq`` first, as the documented recipe says):

* drains: nodes whose latest hook run failed, grouped by (context, script,
  sha256) of the first failed script -> ``(context, script, sha256, count,
  nodes, exit_codes)``;
* why: the node's latest failed hook, its first failed script, and how many
  nodes ran that script version without a failure -> ``(context, script,
  sha256, exit_code, job_id, ok_nodes, nodes_ran)``;
* audit job: every script run of the job's hooks -> a sorted list of
  ``(node, context, script, sha256, exit_code, status, hook_id)``.
"""

from __future__ import annotations

import os

from collector import schema

TABLES = ("hook_runs", "script_runs")


def script_failed(r: dict) -> bool:
    """queries.views.SCRIPT_FAILED, row by row."""
    return bool((r["exit_code"] is not None and r["exit_code"] != 0) or r["timed_out"]
                or r["refused"] is not None or r["runner_killed"])


def hook_failed(r: dict) -> bool:
    """queries.views.HOOK_FAILED, row by row."""
    return bool((r["status"] is not None and r["status"] != 0) or r["runner_killed"])


# ---------------------------------------------------------------- reference
def reference(root: str, node: str, job_id: str) -> dict:
    from queries.audit import audit_job
    from queries.drains import drains
    from queries.source import open_source
    from queries.why import why

    con = open_source(archive=root, quiet=True)
    try:
        d = [(x["context"], x["script"], x["sha256"], x["count"], list(x["nodes"]), list(x["exit_codes"] or []))
             for x in drains(con)]
        w = why(con, node)
        c, s = w["cause"], w["systemic"]
        wy = (c["context"], c["script"], c["sha256"], c["exit_code"], c["job_id"], s["ok_nodes"], s["nodes_ran"])
        a = sorted((r["node"], r["context"], r["script"], r["sha256"], r["exit_code"], r["status"], r["hook_id"])
                   for r in audit_job(con, job_id))
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema.ARCHIVE_TABLES}
    finally:
        con.close()
    return {"drains": sorted(d), "why": wy, "audit": a, "counts": counts}


# ---------------------------------------------------------------- plain rows (pyarrow)
def dedup(rows: list[dict], table: str) -> list[dict]:
    keys = schema.KEYS[table]
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: (r.get("stream_seq") is None, r.get("stream_seq") or 0)):
        k = tuple(r[c] for c in keys)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _first_failed(scripts: list[dict], hook_id: str):
    failed = [s for s in scripts if s["hook_id"] == hook_id and script_failed(s)]
    return min(failed, key=lambda s: s["idx"]) if failed else None


def _latest(hooks: list[dict]) -> dict[tuple, dict]:
    latest: dict[tuple, dict] = {}
    for h in hooks:
        k = (h["cluster"], h["node"])
        if k not in latest or (h["start_ts"], h["hook_id"]) > (latest[k]["start_ts"], latest[k]["hook_id"]):
            latest[k] = h
    return latest


def rows_drains(hooks: list[dict], scripts: list[dict]) -> list[tuple]:
    groups: dict[tuple, list] = {}
    for h in _latest(hooks).values():
        if not hook_failed(h):
            continue
        s = _first_failed(scripts, h["hook_id"])
        key = (h["context"], s and s["path"], s and s["sha256"])
        groups.setdefault(key, []).append((h["node"], s and s["exit_code"]))
    return sorted((*k, len(v), sorted(n for n, _ in v), sorted({e for _, e in v if e is not None}))
                  for k, v in groups.items())


def rows_why(hooks: list[dict], scripts: list[dict], node: str) -> tuple:
    mine = [h for h in hooks if h["node"] == node and hook_failed(h)]
    h = max(mine, key=lambda h: (h["start_ts"], h["hook_id"]))
    s = _first_failed(scripts, h["hook_id"])
    per_node: dict[str, bool] = {}
    for r in scripts:
        if r["path"] == s["path"] and r["sha256"] == s["sha256"]:
            per_node[r["node"]] = per_node.get(r["node"], False) or script_failed(r)
    ok = sum(1 for failed in per_node.values() if not failed)
    return (h["context"], s["path"], s["sha256"], s["exit_code"], h["job_id"], ok, len(per_node))


def rows_audit(hooks: list[dict], scripts: list[dict], job_id: str) -> list[tuple]:
    out = []
    for h in hooks:
        if h["job_id"] != job_id:
            continue
        mine = [s for s in scripts if s["hook_id"] == h["hook_id"]] or [None]
        for s in mine:
            out.append((h["node"], h["context"], s and s["path"], s and s["sha256"], s and s["exit_code"],
                        h["status"], h["hook_id"]))
    return sorted(out, key=repr)


# ---------------------------------------------------------------- Spark SQL
def spark_views(spark, root: str) -> None:
    """Each table as spark.read.parquet(<archive>/<table>) with defaults,
    deduplicated on its key (lowest stream_seq first)."""
    for t in TABLES:
        spark.read.parquet(os.path.join(root, t)).createOrReplaceTempView(f"raw_{t}")
        keys = ", ".join(schema.KEYS[t])
        spark.sql(f"""SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY {keys}
                      ORDER BY stream_seq) AS _rn FROM raw_{t}) WHERE _rn = 1""").createOrReplaceTempView(t)


_SPARK_SCRIPT_FAILED = ("((exit_code IS NOT NULL AND exit_code <> 0) OR coalesce(timed_out, false)"
                        " OR refused IS NOT NULL OR coalesce(runner_killed, false))")
_SPARK_HOOK_FAILED = "((status IS NOT NULL AND status <> 0) OR coalesce(runner_killed, false))"
_SPARK_FIRST_FAILED = f"""
    SELECT * FROM (SELECT s.*, row_number() OVER (PARTITION BY hook_id ORDER BY idx) AS _k
                   FROM script_runs s WHERE {_SPARK_SCRIPT_FAILED}) WHERE _k = 1"""


def spark_drains(spark) -> list[tuple]:
    rows = spark.sql(f"""
        WITH latest AS (SELECT * FROM (SELECT h.*, row_number() OVER (PARTITION BY cluster, node
                                       ORDER BY start_ts DESC, hook_id DESC) AS _l FROM hook_runs h) WHERE _l = 1),
             ff AS ({_SPARK_FIRST_FAILED})
        SELECT l.context, ff.path, ff.sha256, count(*) AS n, sort_array(collect_list(l.node)) AS nodes,
               sort_array(collect_set(ff.exit_code)) AS codes
        FROM latest l LEFT JOIN ff ON ff.hook_id = l.hook_id
        WHERE {_SPARK_HOOK_FAILED.replace('status', 'l.status').replace('runner_killed', 'l.runner_killed')}
        GROUP BY l.context, ff.path, ff.sha256""").collect()
    return sorted((r[0], r[1], r[2], r[3], list(r[4]), list(r[5])) for r in rows)


def spark_why(spark, node: str) -> tuple:
    (h,) = spark.sql(f"""
        SELECT h.context, h.job_id, ff.path, ff.sha256, ff.exit_code FROM hook_runs h
        JOIN ({_SPARK_FIRST_FAILED}) ff ON ff.hook_id = h.hook_id
        WHERE h.node = '{node}' AND {_SPARK_HOOK_FAILED.replace('status', 'h.status')
                                     .replace('runner_killed', 'h.runner_killed')}
        ORDER BY h.start_ts DESC, h.hook_id DESC LIMIT 1""").collect()
    (ok, ran), = spark.sql(f"""
        SELECT count_if(NOT failed), count(*) FROM (
            SELECT node, bool_or({_SPARK_SCRIPT_FAILED}) AS failed FROM script_runs
            WHERE path = '{h.path}' AND sha256 = '{h.sha256}' GROUP BY node)""").collect()
    return (h.context, h.path, h.sha256, h.exit_code, h.job_id, ok, ran)


def spark_audit(spark, job_id: str) -> list[tuple]:
    rows = spark.sql(f"""
        SELECT h.node, h.context, s.path, s.sha256, s.exit_code, h.status, h.hook_id
        FROM hook_runs h LEFT JOIN script_runs s ON s.hook_id = h.hook_id
        WHERE h.job_id = '{job_id}'""").collect()
    return sorted((tuple(r) for r in rows), key=repr)


# ---------------------------------------------------------------- polars
def polars_tables(root: str) -> dict:
    """Each table as pl.read_parquet(<archive>/<table>) with defaults, deduplicated."""
    import polars as pl

    out = {}
    for t in TABLES:
        df = pl.read_parquet(os.path.join(root, t))
        out[t] = df.sort("stream_seq", nulls_last=True).unique(subset=list(schema.KEYS[t]), keep="first",
                                                                maintain_order=True)
    return out


def _pl_failed(pl, kind: str):
    if kind == "script":
        return ((pl.col("exit_code").is_not_null() & (pl.col("exit_code") != 0))
                | pl.col("timed_out").fill_null(False) | pl.col("refused").is_not_null()
                | pl.col("runner_killed").fill_null(False))
    return (pl.col("status").is_not_null() & (pl.col("status") != 0)) | pl.col("runner_killed").fill_null(False)


def _pl_first_failed(pl, scripts):
    return scripts.filter(_pl_failed(pl, "script")).sort("idx").group_by("hook_id").first()


def polars_drains(tables: dict) -> list[tuple]:
    import polars as pl

    h, s = tables["hook_runs"], tables["script_runs"]
    latest = h.sort(["start_ts", "hook_id"], descending=True).group_by(["cluster", "node"]).first()
    failed = latest.filter(_pl_failed(pl, "hook"))
    ff = _pl_first_failed(pl, s).select(["hook_id", "path", "sha256", pl.col("exit_code").alias("code")])
    j = failed.join(ff, on="hook_id", how="left")
    g = j.group_by(["context", "path", "sha256"]).agg(
        pl.len().alias("n"), pl.col("node").sort().alias("nodes"), pl.col("code").drop_nulls().unique().sort())
    return sorted((r[0], r[1], r[2], r[3], list(r[4]), list(r[5])) for r in g.iter_rows())


def polars_why(tables: dict, node: str) -> tuple:
    import polars as pl

    h, s = tables["hook_runs"], tables["script_runs"]
    mine = h.filter((pl.col("node") == node) & _pl_failed(pl, "hook")).join(
        _pl_first_failed(pl, s).select(["hook_id", "path", "sha256", "exit_code"]), on="hook_id")
    top = mine.sort(["start_ts", "hook_id"], descending=True).row(0, named=True)
    per = s.filter((pl.col("path") == top["path"]) & (pl.col("sha256") == top["sha256"])).group_by("node").agg(
        _pl_failed(pl, "script").any().alias("failed"))
    ok = per.filter(~pl.col("failed")).height
    return (top["context"], top["path"], top["sha256"], top["exit_code"], top["job_id"], ok, per.height)


def polars_audit(tables: dict, job_id: str) -> list[tuple]:
    import polars as pl

    h, s = tables["hook_runs"], tables["script_runs"]
    j = h.filter(pl.col("job_id") == job_id).join(
        s.select(["hook_id", "path", "sha256", "exit_code"]), on="hook_id", how="left")
    return sorted(j.select(["node", "context", "path", "sha256", "exit_code", "status", "hook_id"]).iter_rows(),
                  key=repr)
