"""Store access and the helpers every page's data uses: opening the store,
rows as dicts, time windows and buckets, GPU series.  dashboards.data (one
function per page) and dashboards.jobdata both import these from here, so
neither imports the other back.
"""

import math
import os
from datetime import date, datetime, timedelta, timezone

from dashboards import DashboardError
from queries.source import TimeSpecError, open_source
from queries.source import parse_time as _parse_time


class NotFound(DashboardError):
    """The job, node or script is not in the store (HTTP 404)."""


class BadRequest(DashboardError):
    """A parameter the user gave cannot be used (HTTP 400)."""


class StoreUnavailable(DashboardError):
    """The store cannot be opened; the message says which file and what to do."""


#: gpu_samples column -> (label, unit, scale applied for display)
GPU_METRICS = {
    "utilization": ("GPU utilization", "%", 100.0),
    "memory_used": ("Memory used", "GiB", 1.0 / 2**30),
    "power_w": ("Power", "W", 1.0),
    "temperature_c": ("Temperature", "°C", 1.0),
    "sm_clock_mhz": ("SM clock", "MHz", 1.0),
}
#: A script run failed when any of these hold (refused runs count as failures).
FAILED_SQL = "(coalesce(exit_code, 0) <> 0 OR coalesce(timed_out, false) OR refused IS NOT NULL)"
MAX_POINTS = 1200  # per series; uPlot stays smooth far beyond this, the wire stays small
DEFAULT_WINDOW = timedelta(days=7)


# ---------------------------------------------------------------- store access
def open_store(db=None, archive=None):
    """A read-only DuckDB connection on the store (a file or a Parquet archive).

    Given both (as ``hookscope serve`` does), the DuckDB file wins: it is
    complete up to the last snapshot; the archive is read only when no file
    is there yet."""
    if db and archive:
        if os.path.exists(db):
            archive = None
        else:
            db = None
    try:
        return open_source(db=db, archive=archive)
    except Exception as exc:  # QueryError and DuckDB errors name the file and what to do
        raise StoreUnavailable(str(exc)) from exc


# ---------------------------------------------------------------- helpers
def _jsonable(v):
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc).replace(tzinfo=None)
        return v.isoformat(timespec="milliseconds") + "Z"
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)  # Decimal, UUID...


def _rows(con, sql, params=()):
    cur = con.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    return [{c: _jsonable(v) for c, v in zip(cols, row)} for row in cur.fetchall()]


def _one(con, sql, params=()):
    rows = _rows(con, sql, params)
    return rows[0] if rows else None


def parse_time(value, now=None):
    """queries.source.parse_time (the one set of rules: ISO-8601, ``now``, or an
    age such as 30m, 30min, 24h, 7d), its error an HTTP 400 here."""
    try:
        return _parse_time(value, now=now)
    except TimeSpecError as exc:
        raise BadRequest(str(exc)) from None


def _window(con, since, until, table="hook_runs", where="", params=()):
    """Resolve the time window.  Relative times count back from now.  With no
    window given: the 7 days before the newest data, or less when the history
    is shorter (charts zoom to the data)."""
    until_t, since_t = parse_time(until), parse_time(since)
    if until_t is None and since_t is not None:
        until_t = datetime.now(timezone.utc)
    if until_t is None or since_t is None:
        first, last = con.execute(f"SELECT min(start_ts), max(start_ts) FROM {table} {where}",
                                  list(params)).fetchone()
        if until_t is None:
            until_t = (last or datetime.now(timezone.utc)) + timedelta(seconds=1)
        since_t = until_t - DEFAULT_WINDOW
        if first and first > since_t:
            since_t = first - timedelta(seconds=1)
    if since_t >= until_t:
        raise BadRequest(f"the window is empty: since ({since_t.isoformat()}) is not before "
                         f"until ({until_t.isoformat()})")
    return since_t, until_t


def _bucket_seconds(since, until, target=MAX_POINTS):
    """A round bucket width giving at most ``target`` buckets across the window."""
    span = max((until - since).total_seconds(), 1.0)
    for b in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400, 604800):
        if span / b <= target:
            return b
    return int(span / target) + 1


def _status_sql(col="status"):
    return f"coalesce({col}, 0) <> 0"


# ---------------------------------------------------------------- GPU series
def _gpu_series(con, where, params, since, until):
    """GPU metrics on one time grid: {gpus, t, metrics{col: [per-gpu list]}, markers}."""
    bucket = _bucket_seconds(since, until, target=600)
    cols = ", ".join(f"avg({c}) AS {c}" for c in GPU_METRICS)
    sql = f"""
        SELECT node, gpu_index, floor(epoch(ts) / ?) * ? AS t, {cols},
               any_value(uuid) AS uuid, any_value(model) AS model
        FROM gpu_samples WHERE {where} AND ts >= ? AND ts < ?
        GROUP BY ALL ORDER BY node, gpu_index, t"""
    cur = con.execute(sql, [bucket, bucket, *params, since, until])
    rows = cur.fetchall()
    gpus, index, times = [], {}, set()
    for r in rows:
        key = (r[0], r[1])
        if key not in index:
            index[key] = len(gpus)
            gpus.append({"node": r[0], "index": r[1], "uuid": r[-2], "model": r[-1],
                         "label": f"{r[0]} GPU{r[1]}"})
        times.add(r[2])
    t = sorted(times)
    pos = {v: i for i, v in enumerate(t)}
    metrics = {c: [[None] * len(t) for _ in gpus] for c in GPU_METRICS}
    for r in rows:
        g, i = index[(r[0], r[1])], pos[r[2]]
        for k, c in enumerate(GPU_METRICS):
            v = r[3 + k]
            if v is not None and math.isfinite(v):  # a failed sensor read may store NaN
                metrics[c][g][i] = round(v * GPU_METRICS[c][2], 3)
    markers = _rows(con, f"""
        WITH s AS (
            SELECT node, gpu_index, ts, xid, ecc_dbe, ecc_sbe,
                   lag(xid) OVER w AS pxid, lag(ecc_dbe) OVER w AS pdbe
            FROM gpu_samples WHERE {where} AND ts >= ? AND ts < ?
            WINDOW w AS (PARTITION BY node, gpu_index ORDER BY ts))
        SELECT epoch(ts) AS t, ts AS time, node, gpu_index,
               CASE WHEN coalesce(xid, 0) <> 0 AND coalesce(xid, 0) <> coalesce(pxid, 0)
                    THEN 'XID ' || xid ELSE 'ECC uncorrected +' || (ecc_dbe - coalesce(pdbe, 0)) END AS label,
               CASE WHEN coalesce(xid, 0) <> 0 AND coalesce(xid, 0) <> coalesce(pxid, 0)
                    THEN 'xid' ELSE 'ecc' END AS kind
        FROM s
        WHERE (coalesce(xid, 0) <> 0 AND coalesce(xid, 0) <> coalesce(pxid, 0))
           OR (pdbe IS NOT NULL AND ecc_dbe > pdbe) OR (pdbe IS NULL AND coalesce(ecc_dbe, 0) > 0)
        ORDER BY ts LIMIT 500""", [*params, since, until])
    return {"bucket_s": bucket, "gpus": gpus, "t": t, "metrics": metrics, "markers": markers}


JOB_META = ("cluster", "user_name", "uid", "account", "partition", "job_name", "nodelist",
            "array_job_id", "array_task_id", "restart_count", "gpus")
