"""Open the store for reading: a live DuckDB file (or its snapshot) or the
Parquet archive, behind the same table names and the same documented views.

Every query in this package runs against the connection returned by
:func:`open_source`; it never writes to the store.  The store's tables are
exposed under their own names (``hook_runs``, ``script_runs``, ...) as views in
an in-memory catalog, so a DuckDB file and an archive look identical to the
queries above them.
"""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime, timedelta, timezone

import duckdb

from collector import schema
from queries import QueryError


class SourceError(QueryError):
    """The store cannot be opened (missing file, bad archive, wrong flags)."""


class TimeSpecError(QueryError):
    """A --since/--until value is neither ISO-8601 nor relative (24h, 7d)."""


_COLUMN_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+([A-Z]+(?:\[\])?)", re.MULTILINE)


def table_columns(table: str) -> list[tuple[str, str]]:
    """(name, type) of a store table, parsed from ``collector.schema``."""
    body = schema.RAW_COLUMNS if table == "raw" else schema.TABLES[table]
    cols = []
    for line in body.splitlines():
        line = line.split("--", 1)[0]
        m = _COLUMN_RE.match(line)
        if m and m.group(1) not in ("primary",) and not line.strip().upper().startswith("PRIMARY"):
            cols.append((m.group(1), m.group(2)))
    return cols


def _store_tables() -> list[str]:
    return [t for t in schema.TABLES if t != "ingest_state"] + ["ingest_state"]


def _empty_view(con, table: str) -> None:
    cols = ", ".join(f"NULL::{typ} AS {name}" for name, typ in table_columns(table))
    con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {cols} WHERE false")


def _open_db(db: str, quiet: bool):
    if not os.path.exists(db):
        raise SourceError(
            f"store file {db} does not exist: pass the collector's DuckDB file with --db "
            f"(see 'hookscope collect --help'), or an archive directory with --archive")
    con = duckdb.connect(":memory:")
    path = db
    try:
        con.execute("ATTACH ? AS store (READ_ONLY)", [path])
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise SourceError(f"cannot open store file {db}: {exc}") from exc
        snap = schema.snapshot_path(db)
        if not os.path.exists(snap):
            raise SourceError(
                f"store file {db} is locked by the running collector and its snapshot {snap} "
                f"does not exist yet: wait for the collector's next snapshot, or query the "
                f"archive with --archive") from exc
        if not quiet:
            sys.stderr.write(f"hookscope: {db} is locked by the collector; reading its snapshot {snap}\n")
        path = snap
        try:
            con.execute("ATTACH ? AS store (READ_ONLY)", [path])
        except duckdb.Error as exc2:
            raise SourceError(f"cannot open snapshot {snap} of {db}: {exc2}") from exc2
    except duckdb.Error as exc:
        raise SourceError(f"cannot open store file {db} (is it a DuckDB file?): {exc}") from exc
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'").fetchall()}
    for table in _store_tables():
        if table not in present:
            _empty_view(con, table)
            continue
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name='store' AND table_name=?",
            [table]).fetchall()}
        # An older store may lack a column the schema added since: NULL it.
        sel = ", ".join(name if name in have else f"NULL::{typ} AS {name}"
                        for name, typ in table_columns(table))
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {sel} FROM store.main.{table}")
    con.execute("CREATE OR REPLACE VIEW raw AS SELECT " + ", ".join(
        f"NULL::{t} AS {n}" for n, t in table_columns("raw")) + " WHERE false")
    return con, path


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _open_archive(archive: str):
    if not os.path.isdir(archive):
        raise SourceError(
            f"archive directory {archive} does not exist: pass the collector's archive root "
            f"(the directory holding hook_runs/, script_runs/, ...) with --archive")
    con = duckdb.connect(":memory:")
    # Every query reads the same files' footers again: keep them in memory.
    con.execute("SET parquet_metadata_cache = true")
    for table in schema.ARCHIVE_TABLES:
        tdir = os.path.join(archive, table)
        has_files = os.path.isdir(tdir) and any(
            f.endswith(".parquet") for _, _, files in os.walk(tdir) for f in files)
        if not has_files:
            _empty_view(con, table)
            continue
        glob = _sql_str(os.path.join(tdir, "**", "*.parquet"))
        src = f"read_parquet({glob}, hive_partitioning=true, union_by_name=true)"
        try:
            have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        except duckdb.Error as exc:
            raise SourceError(f"cannot read the archive files under {tdir}: {exc}") from exc
        sel = ", ".join(f"CAST({name} AS {typ}) AS {name}" if name in have else f"NULL::{typ} AS {name}"
                        for name, typ in table_columns(table))
        con.execute(f"CREATE OR REPLACE VIEW _src_{table} AS SELECT {sel} FROM {src}")
        _dedup_view(con, table)
    _empty_view(con, "ingest_state")
    return con


def _dedup_view(con, table: str) -> None:
    """``table`` over ``_src_<table>`` with one row per ``schema.KEYS`` key.

    A redelivery after a crash can archive the same rows twice, but such
    duplicates are rare.  A window over the whole table on every query would
    cost seconds (and blocks filter pushdown), so the duplicated keys are
    found once here; rows with other keys are read as they are, so a query's
    filters (node, job, time) still reach the Parquet scan.
    """
    keys = ", ".join(schema.KEYS[table])
    dup = f"_dup_{table}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {dup} AS SELECT {keys} FROM _src_{table} "
                f"GROUP BY ALL HAVING count(*) > 1")
    if not con.execute(f"SELECT count(*) FROM {dup}").fetchone()[0]:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _src_{table}")
        return
    cols = ", ".join(f"s.{n}" for n, _ in table_columns(table))
    con.execute(f"""CREATE OR REPLACE VIEW {table} AS
        SELECT {cols} FROM _src_{table} s ANTI JOIN {dup} d USING ({keys})
        UNION ALL
        SELECT {cols} FROM _src_{table} s SEMI JOIN {dup} d USING ({keys})
        QUALIFY row_number() OVER (PARTITION BY {", ".join("s." + k for k in schema.KEYS[table])}) = 1""")


def open_source(db: str | None = None, archive: str | None = None, *, quiet: bool = False):
    """A read-only DuckDB connection over the store, with the documented views.

    ``db``: the collector's DuckDB file, attached read-only; when the running
    collector holds its lock, its snapshot (``schema.snapshot_path``) is read
    instead and one line on stderr says so.  ``archive``: the Parquet archive
    root, read through views deduplicated on ``schema.KEYS``.
    """
    if (db is None) == (archive is None):
        raise SourceError("give exactly one source: --db FILE (the DuckDB store) or --archive DIR")
    if db is not None:
        con, _ = _open_db(os.fspath(db), quiet)
    else:
        con = _open_archive(os.fspath(archive))
    con.execute("SET TimeZone = 'UTC'")
    from queries import views

    views.create_views(con)
    return con


# ---------------------------------------------------------------- time helpers
_REL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value, *, now: datetime | None = None) -> datetime | None:
    """A --since/--until value as an aware UTC datetime.

    Accepts None, a datetime, ISO-8601 (``2026-12-01``, ``2026-12-01T10:00Z``;
    naive means UTC), ``now``, or a relative age such as ``30m``, ``24h``,
    ``7d``, ``2w`` meaning that long before now.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    text = str(value).strip()
    now = now or datetime.now(timezone.utc)
    if text.lower() == "now":
        return now
    m = _REL_RE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeSpecError(
            f"cannot read time {value!r}: use ISO-8601 (2026-12-01T10:00Z) or a relative age "
            f"such as 30m, 24h, 7d, 2w") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def iso(value) -> str | None:
    """ISO-8601 UTC with a Z, millisecond precision kept when present."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        # Always microseconds: the strings sort as the times do, and parse
        # back (parse_time) to the exact stored value.
        return value.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return str(value)


def window_sql(column: str, since, until, params: list) -> str:
    """`` AND column >= ? AND column < ?`` for the bounds that are set."""
    sql = ""
    s, u = parse_time(since), parse_time(until)
    if s is not None:
        sql += f" AND {column} >= ?"
        params.append(s)
    if u is not None:
        sql += f" AND {column} < ?"
        params.append(u)
    return sql


def rows(con, sql: str, params=()) -> list[dict]:
    """Run ``sql`` and return JSON-able dicts (datetimes as ISO-8601 UTC)."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    out = []
    for rec in cur.fetchall():
        out.append({n: _jsonable(v) for n, v in zip(names, rec)})
    return out


def _jsonable(v):
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and v != v:
        return None
    return v
