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
from collector.archive import file_shapes, layout_groups, partition_key
from queries import QueryError, scope


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


def _empty_select(table: str) -> str:
    cols = ", ".join(f"NULL::{typ} AS {name}" for name, typ in table_columns(table))
    return f"SELECT {cols}, DATE 'infinity' AS _date WHERE false"


def _empty_view(con, table: str) -> None:
    con.execute(f"CREATE OR REPLACE VIEW {table} AS {_empty_select(table)}")


_TOLD: set[str] = set()


def _open_db(db: str, quiet: bool):
    if not os.path.exists(db):
        raise SourceError(
            f"store file {db} does not exist: pass the collector's DuckDB file with --db "
            f"(see 'hookscope collect --help'), or an archive directory with --archive")
    con = duckdb.connect(":memory:")
    path = db
    try:
        con.execute("ATTACH ? AS store (READ_ONLY)", [path])
    except duckdb.Error as exc:
        # Another process holds DuckDB's writer lock (IOException), or this
        # process does (`hookscope serve` runs the collector beside the
        # dashboard: "already attached"): either way, read the snapshot.
        msg = str(exc).lower()
        if "lock" not in msg and "already attached" not in msg:
            raise SourceError(f"cannot open store file {db} (is it a DuckDB file?): {exc}") from exc
        snap = schema.snapshot_path(db)
        if not os.path.exists(snap):
            raise SourceError(
                f"store file {db} is locked by the running collector and its snapshot {snap} "
                f"does not exist yet: wait for the collector's next snapshot, or query the "
                f"archive with --archive") from exc
        if not quiet and db not in _TOLD:
            # Once per process: a dashboard opens the source for every request.
            _TOLD.add(db)
            sys.stderr.write(f"hookscope: {db} is locked by the collector; reading its snapshot {snap}\n")
        path = snap
        try:
            con.execute("ATTACH ? AS store (READ_ONLY)", [path])
        except duckdb.Error as exc2:
            raise SourceError(f"cannot open snapshot {snap} of {db}: {exc2}") from exc2
    # The collector's snapshot is a catalog of views over Parquet parts
    # (collector/snapshot.py): views count as tables.
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'store' UNION "
        "SELECT view_name FROM duckdb_views() WHERE database_name = 'store'").fetchall()}
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
        # _date: the archive's partition date (for pruning); always true here.
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {sel}, DATE 'infinity' AS _date "
                    f"FROM store.main.{table}")
    _empty_view(con, "raw")
    return con, path


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


_SEQ_RANGE = re.compile(r"-(\d{12})-(\d{12})\.parquet$")
_TYPE_ALIASES = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE", "JSON": "VARCHAR"}


def _list_parquet(tdir: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(tdir):
        # Files are written under a hidden temporary name, then renamed.
        out.extend(os.path.join(dirpath, f) for f in files if f.endswith(".parquet")
                   and not f.startswith("."))
    return sorted(out)


def _archive_files(tdir: str, tries: int = 5) -> list[str]:
    """The table's files, listed until two listings agree: a listing taken
    while a compaction renames its file in and unlinks the inputs could miss
    both (readdir does not promise entries added or removed meanwhile)."""
    last = _list_parquet(tdir)
    for _ in range(tries):
        again = _list_parquet(tdir)
        if again == last:
            return again
        last = again
    return last


def _suspects(files: list[str]) -> set[str] | None:
    """Files that may hold rows of another file: None when the names do not
    follow the layout (then every key is checked).

    A redelivery writes the same messages again, into the same partition (the
    date is the day the stream received them) and with an overlapping stream
    sequence range in the file name; files whose ranges overlap no other
    file's in their directory cannot hold duplicates.
    """
    by_dir: dict[str, list] = {}
    for f in files:
        m = _SEQ_RANGE.search(os.path.basename(f))
        if not m:
            return None
        # (cluster, date) in either archive layout: a copy may sit in the other one
        by_dir.setdefault(partition_key(f), []).append((int(m.group(1)), int(m.group(2)), f))
    out: set[str] = set()
    for lst in by_dir.values():
        lst.sort()
        group, end = [], -1
        for first, last, f in lst:
            if group and first <= end:
                group.append(f)
                end = max(end, last)
                continue
            if len(group) > 1:
                out.update(group)
            group, end = [f], last
        if len(group) > 1:
            out.update(group)
    return out


def _select(con, table: str, files: list[str]) -> str:
    """SELECT of the schema's columns (plus ``_date``) over these files."""
    groups = layout_groups(files)
    if len(groups) > 1:
        # Archives from before the cluster column moved into the files hold
        # cluster=<c>/date=<d>/ directories: each layout is one scan.
        return " UNION ALL ".join(_select(con, table, g) for g in groups)
    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    # union_by_name costs every query a schema merge over all the files:
    # only ask for it when the files really differ (a column added later).
    try:
        # each file's footer read once (collector.archive.file_shapes caches it)
        shapes = len(set(file_shapes(con, files).values()))
    except duckdb.Error as exc:
        raise SourceError(f"cannot read the archive files of {table} "
                          f"({files[0]} ...): {exc}") from exc
    union = ", union_by_name=true" if shapes > 1 else ""
    # Partition values are typed by us, not guessed: cluster "001" stays text.
    parts = {c.split("=", 1)[0] for f in files for c in f.split(os.sep)[:-1] if "=" in c}
    types = ", ".join(f"'{k}': {t}" for k, t in (("cluster", "VARCHAR"), ("date", "DATE")) if k in parts)
    hive = f", hive_types={{{types}}}" if types else ""
    src = f"read_parquet({lst}, hive_partitioning=true{hive}{union})"
    try:
        have = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    except duckdb.Error as exc:
        raise SourceError(f"cannot read the archive files of {table} "
                          f"({files[0]} ...): {exc}") from exc
    sel = []
    for name, typ in table_columns(table):
        if table == "journal" and name == "chain":
            # Records archived before chain ids: chain '' (as the collector loads them).
            sel.append(f"coalesce({name}, '') AS {name}" if name in have else f"''::{typ} AS {name}")
        elif name not in have:
            # Written before the column was added to the schema.
            sel.append(f"NULL::{typ} AS {name}")
        elif have[name] in (typ, _TYPE_ALIASES.get(typ)):
            sel.append(name)
        else:
            sel.append(f"CAST({name} AS {typ}) AS {name}")
    # The hive ``date`` partition, kept so lower time bounds prune directories.
    sel.append("date AS _date" if have.get("date") == "DATE" else "DATE 'infinity' AS _date")
    return f"SELECT {', '.join(sel)} FROM {src}"


def _view_sql(con, table: str, files: list[str]) -> str | None:
    """The body of ``table``'s view over ``files``, one row per key; None when
    the file names cannot tell which files may share rows (then
    :func:`_dedup_by_keys` builds the view)."""
    if not files:
        return _empty_select(table)
    suspects = _suspects(files)
    if suspects is None:
        return None
    parts = []
    clean = [f for f in files if f not in suspects]
    if clean:
        parts.append(_select(con, table, clean))
    if suspects:
        parts.append(f"SELECT * FROM ({_select(con, table, sorted(suspects))}) {_first_per_key(table)}")
    return " UNION ALL ".join(parts)


def _open_archive(archive: str):
    if not os.path.isdir(archive):
        raise SourceError(
            f"archive directory {archive} does not exist: pass the collector's archive root "
            f"(the directory holding hook_runs/, script_runs/, ...) with --archive")
    con = duckdb.connect(":memory:")
    # Every query reads the same files' footers again: keep them in memory.
    con.execute("SET GLOBAL parquet_metadata_cache = true")
    listed = {}
    for table in schema.ARCHIVE_TABLES:
        files = listed[table] = _archive_files(os.path.join(archive, table))
        body = _view_sql(con, table, files)
        if body is None:
            _dedup_by_keys(con, table, _select(con, table, files))
        else:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")
    _empty_view(con, "ingest_state")
    # Statements with a lower date bound read only that bound's files (queries.scope).
    scope.register(con, scope.ArchiveIndex(listed, _view_sql))
    return con


def _first_per_key(table: str) -> str:
    """The QUALIFY clause keeping one row per key: among copies of a key the
    lowest stream_seq wins, as the live store keeps the first (collector.dedup)."""
    keys = ", ".join(schema.KEYS[table])
    order = " ORDER BY stream_seq" if any(n == "stream_seq" for n, _ in table_columns(table)) else ""
    return f"QUALIFY row_number() OVER (PARTITION BY {keys}{order}) = 1"


def _dedup_by_keys(con, table: str, select: str) -> None:
    """``table`` with one row per key, when file names cannot tell which
    files may share rows: the duplicated keys are found once, here, so only
    their rows pay for the window and other rows keep filter pushdown."""
    keys = ", ".join(schema.KEYS[table])
    dedup = _first_per_key(table)
    con.execute(f"CREATE OR REPLACE VIEW _src_{table} AS {select}")
    dup = f"_dup_{table}"
    con.execute(f"CREATE OR REPLACE TABLE {dup} AS SELECT {keys} FROM _src_{table} "
                f"GROUP BY ALL HAVING count(*) > 1")
    if not con.execute(f"SELECT count(*) FROM {dup}").fetchone()[0]:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _src_{table}")
        return
    con.execute(f"""CREATE OR REPLACE VIEW {table} AS
        SELECT s.* FROM _src_{table} s ANTI JOIN {dup} d USING ({keys})
        UNION ALL
        SELECT * FROM (SELECT s.* FROM _src_{table} s SEMI JOIN {dup} d USING ({keys})) {dedup}""")


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
    # GLOBAL: cursors (one per thread, as the dashboard uses) share it.
    con.execute("SET GLOBAL TimeZone = 'UTC'")
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


#: Every table view has ``_date``: the archive's hive partition (the day the
#: stream received the rows), or 'infinity' on a DuckDB store.  Rows arrive
#: after they happen (node clocks may run up to a day ahead: the collector
#: dead-letters more), so ``_date >= day(t) - 1`` never drops a row with a
#: time >= t, and it lets the archive skip older directories.
DATE_SLACK = timedelta(days=1)


def date_floor(t):
    """The ``_date`` lower bound that is safe for times >= ``t``."""
    return (parse_time(t) - DATE_SLACK).date()


def since_sql(column: str, lo, params: list, prefix: str = "") -> str:
    """`` AND column >= ? AND _date >= ?`` (pruning the archive's partitions)."""
    params += [parse_time(lo), date_floor(lo)]
    return f" AND {column} >= ? AND {prefix}_date >= ?"


def window_floor(since):
    """The ``floor`` (:func:`rows`) of a statement filtered by
    :func:`window_sql` from ``since``: None when there is no lower bound."""
    return None if parse_time(since) is None else date_floor(since)


def window_sql(column: str, since, until, params: list) -> str:
    """`` AND column >= ? AND column < ?`` for the bounds that are set."""
    sql = ""
    s, u = parse_time(since), parse_time(until)
    if s is not None:
        sql += since_sql(column, s, params)
    if u is not None:
        sql += f" AND {column} < ?"
        params.append(u)
    return sql


def rows(con, sql: str, params=(), floor=None) -> list[dict]:
    """Run ``sql`` and return JSON-able dicts (datetimes as ISO-8601 UTC).

    ``floor``: a day such that every store table the statement reads is
    filtered by ``_date >= floor`` or a later day; on an archive the statement
    then reads only those days' files (:mod:`queries.scope`)."""
    cur = con.execute(scope.scoped(con, sql, floor), list(params))
    names = [d[0] for d in cur.description]
    out = []
    keep = [i for i, n in enumerate(names) if n != "_date"]
    for rec in cur.fetchall():
        out.append({names[i]: _jsonable(rec[i]) for i in keep})
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
