"""The Parquet archive: the immutable event store of record.

Layout (``schema.ARCHIVE_TABLES``)::

    <archive>/<table>/date=<YYYY-MM-DD>/<cluster>/<consumer>-<first:012d>-<last:012d>.parquet
    <archive>/<table>/date=1970-01-01/schema-000000000000-000000000000.parquet   (0 rows)

Plain Parquet (zstd, microsecond UTC timestamps, no unsigned integers) that
Spark, polars, pyarrow, DuckDB and Trino read as-is, with their defaults:

* identity columns live inside the files: ``cluster`` is a column of every
  table that has one, so a cluster named ``001`` stays the string "001" (a
  Hive ``cluster=001`` directory was typed as the integer 1 by Spark's,
  polars' and pyarrow's partition discovery).  The ``<cluster>`` directory
  (%-escaped; never starting with ``_`` or ``.``, which Spark and pyarrow
  skip) only groups files; ``date=`` is the one Hive partition, for pruning,
  and every engine types it the same (a date; pyarrow: a string);
* every table has a 0-row file holding its schema, so an empty table
  (``node_events``, ``dead_letters`` on a quiet cluster) is a table with
  columns, not a missing path (Spark's PATH_NOT_FOUND).  The file is rewritten
  when the schema grows, so an engine that takes the schema from one file
  sees every column;
* ``UBIGINT`` columns (stream sequences) are written as signed 64-bit
  integers: Spark reads unsigned 64-bit Parquet as decimal(20,0).

Archives written before this layout (``<table>/cluster=<c>/date=<d>/...``,
cluster only in the path) are still read: :func:`read_sql` and
``queries.source`` read each layout with its own partition settings.

Each file is written under a hidden temporary name, fsynced, renamed into
place and its directory fsynced, so a reader never sees half a file.  The
``date`` is the day the stream received the message (UTC), so a replay writes
into the same partition.  A crash between this write and the DuckDB commit
leaves a file whose rows come again after redelivery: readers dedupe on
``schema.KEYS`` (:func:`read_sql` does).
"""

from __future__ import annotations

import os
import re

from collector import schema
from collector.errors import CollectorError
from emitter.fsutil import replacing

# pyarrow and the column tables are imported where used: ``queries.source``
# imports this module for the path helpers alone, and its start-up stays light.


class ArchiveError(CollectorError):
    """The Parquet archive could not be written or read."""


_CONSUMER_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
#: The 0-row file that carries each table's schema (the seq range keeps the
#: file-name pattern readers use to find overlapping files).
SCHEMA_DATE = "1970-01-01"
SCHEMA_FILE = "schema-000000000000-000000000000.parquet"


def file_name(consumer: str, first_seq: int, last_seq: int) -> str:
    return f"{_CONSUMER_SAFE.sub('_', consumer)}-{first_seq:012d}-{last_seq:012d}.parquet"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(tb, path: str, fsync: bool, **options) -> None:
    """``pq.write_table(tb, path, **options)``, then ``fdatasync`` when asked.

    Written through pyarrow's native file: through a Python file object,
    pyarrow calls back into Python for every page it writes, each time
    waiting for the GIL that the collector's decoding loop holds (beside a
    busy Python thread, 5.8x slower; docs/benchmarks.md "The collector and
    the GIL, session 11").  The descriptor that syncs is opened before the
    first byte is written, so a writeback error of those bytes is reported
    to it (Linux reports such an error to descriptors open when it happened).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666) if fsync else None
    try:
        with pa.OSFile(path, "wb") as sink:
            pq.write_table(tb, sink, **options)
        if fd is not None:
            os.fdatasync(fd)
    finally:
        if fd is not None:
            os.close(fd)


def table_files(root: str, table: str) -> list[str]:
    """Every visible Parquet file of a table, both layouts, schema file included."""
    out = []
    for dirpath, _dirs, files in os.walk(os.path.join(root, table)):
        out.extend(os.path.join(dirpath, f) for f in files
                   if f.endswith(".parquet") and not f.startswith("."))
    return sorted(out)


def hive_keys(path: str) -> tuple:
    """The Hive keys of a file's directories: ('date',) now, ('cluster', 'date') before."""
    return tuple(seg.split("=", 1)[0] for seg in os.path.dirname(path).split(os.sep) if "=" in seg)


def layout_groups(files: list[str]) -> list[list[str]]:
    """Files split by layout: an engine's Hive partitioning wants one set of
    keys per scan (DuckDB: "Hive partition mismatch")."""
    groups: dict[tuple, list[str]] = {}
    for f in files:
        groups.setdefault(hive_keys(f), []).append(f)
    return [groups[k] for k in sorted(groups)]


def partition_key(path: str) -> tuple:
    """(cluster directory, date) of a data file in either layout: files that
    can hold copies of the same rows share it (a redelivery lands in the same
    partition)."""
    segs = os.path.dirname(path).split(os.sep)
    kv = dict(seg.split("=", 1) for seg in segs if "=" in seg)
    if "cluster" in kv:
        cluster = kv["cluster"]
    elif segs and "=" not in segs[-1]:
        cluster = segs[-1]
    else:
        cluster = ""  # the schema file
    return cluster, kv.get("date", "")


class Archive:
    def __init__(self, root: str | os.PathLike, consumer: str = "collector", fsync: bool = True,
                 compression: str = "zstd"):
        self.root = os.fspath(root)
        self.consumer = consumer
        self.fsync = fsync
        self.compression = compression
        self._executor = None
        try:
            os.makedirs(self.root, exist_ok=True)
            self.write_schemas()
        except OSError as exc:
            raise ArchiveError(f"cannot create the archive directory {self.root}: {exc}; "
                               "choose another --archive") from exc

    def write_schemas(self) -> None:
        """The 0-row schema file of every table, (re)written when missing or
        when the schema grew since it was written."""
        import pyarrow.parquet as pq

        from collector.columns import ARROW_SCHEMAS
        for table in schema.ARCHIVE_TABLES:
            d = os.path.join(self.root, table, f"date={SCHEMA_DATE}")
            path = os.path.join(d, SCHEMA_FILE)
            want = ARROW_SCHEMAS[table]
            try:
                if pq.read_schema(path).remove_metadata().equals(want):
                    continue
            except (OSError, ValueError):
                pass  # missing or unreadable: write it
            self._write_one((d, path, want.empty_table()))
            if self.fsync:
                _fsync_dir(d)

    def write(self, parts: dict, first_seq: int, last_seq: int) -> list[str]:
        """Write {(cluster_dir, date): {table: pa.Table}}; returns the file paths.

        The files of one batch are encoded and fsynced in parallel (pyarrow
        and fsync release the GIL); all are durable when this returns.
        """
        name = file_name(self.consumer, first_seq, last_seq)
        jobs = []
        for (cluster, date), tables in parts.items():
            for table, tb in tables.items():
                if tb.num_rows:
                    d = os.path.join(self.root, table, f"date={date}", cluster)
                    jobs.append((d, os.path.join(d, name), tb))
        if len(jobs) > 1:
            written = list(self._pool().map(self._write_one, jobs))
        else:
            written = [self._write_one(j) for j in jobs]
        if self.fsync:
            for d in {j[0] for j in jobs}:
                _fsync_dir(d)
        return written

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hookscope-archive")
        return self._executor

    def _write_one(self, job) -> str:
        d, path, tb = job

        def error(exc):
            return ArchiveError(f"cannot write {path}: {exc}; free space or fix permissions "
                                "(nothing was acknowledged: the batch will come again)")

        # hidden while partial: readers skip dot files
        with replacing(path, error, tmp=os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")) as tmp:
            os.makedirs(d, exist_ok=True)
            write_parquet(tb, tmp, self.fsync, compression=self.compression,
                          compression_level=1 if self.compression == "zstd" else None)
        return path

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def files(self, table: str) -> list[str]:
        """The data files of a table (the schema file left out)."""
        return [f for f in table_files(self.root, table) if os.path.basename(f) != SCHEMA_FILE]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _group_select(table: str, files: list[str]) -> str:
    """The schema's columns (plus ``_file``) over files of one layout.

    Files written before a column was added lack it: NULL, or for a key
    column the documented default (journal.chain: '' = before chain ids).
    The old layout's ``cluster`` comes from its path, typed VARCHAR.
    """
    import pyarrow.parquet as pq

    from collector.columns import COLUMNS
    have = set()
    for f in files:
        have.update(pq.read_schema(f).names)
    keys = hive_keys(files[0])
    have.update(keys)
    exprs = []
    for name, typ, _ in COLUMNS[table]:
        default = _KEY_DEFAULTS.get((table, name))
        if name not in have:
            exprs.append(f'CAST({default or "NULL"} AS {typ}) AS "{name}"')
        elif default is not None:
            exprs.append(f'coalesce("{name}", {default}) AS "{name}"')
        elif typ == "UBIGINT":  # written as BIGINT (portable); older files: UBIGINT
            exprs.append(f'CAST("{name}" AS {typ}) AS "{name}"')
        else:
            exprs.append(f'"{name}"')
    types = ", ".join(f"'{k}': {t}" for k, t in (("cluster", "VARCHAR"), ("date", "DATE")) if k in keys)
    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    src = (f"read_parquet({lst}, hive_partitioning={'true' if keys else 'false'}"
           + (f", hive_types={{{types}}}" if types else "") + ", union_by_name=true, filename=true)")
    return f"SELECT {', '.join(exprs)}, filename AS _file FROM {src}"


def read_sql(root: str, table: str) -> str:
    """SQL over one archived table, deduplicated on its key, in schema column
    order (or an empty relation with the right columns when nothing is there).

    Among duplicate keys the row with the lowest ``stream_seq`` wins where the
    table has one (what the live store keeps: collector.dedup); otherwise the
    rows are identical copies and any one will do.
    """
    from collector.columns import ARROW_SCHEMAS
    sch = ARROW_SCHEMAS[table]
    cols = ", ".join(f'"{f.name}"' for f in sch)
    files = table_files(root, table)
    if not files:
        return f"SELECT {cols} FROM ({_empty_sql(table)})"
    union = " UNION ALL ".join(_group_select(table, g) for g in layout_groups(files))
    keys = ", ".join(schema.KEYS[table])
    order = "stream_seq" if "stream_seq" in sch.names else "_file"
    return (f"SELECT {cols} FROM ({union}) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1")


#: (table, key column) -> SQL value for rows archived before the column existed.
_KEY_DEFAULTS = {("journal", "chain"): "''"}


def _empty_sql(table: str) -> str:
    from collector.columns import COLUMNS
    cols = ", ".join(f"CAST(NULL AS {ty}) AS {c}" for c, ty, _ in COLUMNS[table])
    return f"SELECT {cols} WHERE false"


#: (path, size, mtime_ns) -> the file's columns ("name type" sorted, joined):
#: archive files never change once renamed into place (compaction writes a
#: new name), so a file's footer is read once per process, or once ever
#: where ``<root>/.shapes-<table>.json`` can be written.
_SHAPES: dict[tuple, str] = {}


def _shapes_file(table_dir: str) -> str:
    """``<root>/.shapes-<table>.json``: beside the table directories, not in
    them, so no engine reading ``<root>/<table>`` ever lists it."""
    return os.path.join(os.path.dirname(table_dir), f".shapes-{os.path.basename(table_dir)}.json")


def _table_dir(path: str) -> str | None:
    """``<root>/<table>`` of a data file in either layout (the directory above
    its first ``key=value`` directory); None when the path has none."""
    segs = path.split(os.sep)
    for i, seg in enumerate(segs):
        if "=" in seg and i:
            return os.sep.join(segs[:i])
    return None


def file_shapes(con, files: list[str]) -> dict[str, str]:
    """Each file's column list (names and Parquet types), for deciding
    whether a scan needs ``union_by_name``.  Reading every footer cost ~0.3 ms
    a file at every open; here a file is read once: the answers are kept in
    memory and, best effort, in ``<root>/.shapes-<table>.json`` (written
    under a temporary name and renamed; a read-only archive just skips it)."""
    out, todo, dirs = {}, [], {}
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            todo.append((f, None))
            continue
        key = (f, st.st_size, st.st_mtime_ns)
        shape = _SHAPES.get(key)
        if shape is None:
            d = _table_dir(f)
            if d is not None and d not in dirs:
                dirs[d] = _load_shapes(d)
                shape = _SHAPES.get(key)
        if shape is None:
            todo.append((f, key))
        else:
            out[f] = shape
    if todo:
        lst = "[" + ", ".join(_sql_str(f) for f, _ in todo) + "]"
        got = dict(con.execute(
            f"SELECT file_name, array_to_string(list(name || ' ' || coalesce(type, '') ORDER BY name), ',') "
            f"FROM parquet_schema({lst}) GROUP BY file_name").fetchall())
        for f, key in todo:
            out[f] = got.get(f, "")
            if key is not None and f in got:
                _SHAPES[key] = got[f]
        if len(_SHAPES) > 1_000_000:  # a very long-lived reader: start again
            _SHAPES.clear()
        for d in {_table_dir(f) for f, key in todo if key is not None} - {None}:
            _save_shapes(d)
    return out


def _load_shapes(d: str) -> None:
    import json
    try:
        with open(_shapes_file(d)) as fh:
            for rel, (size, mtime, shape) in json.load(fh).items():
                _SHAPES.setdefault((os.path.join(d, rel), size, mtime), shape)
    except (OSError, ValueError, TypeError):
        pass


def _save_shapes(d: str) -> None:
    import json
    prefix = d + os.sep
    data = {k[0][len(prefix):]: [k[1], k[2], v] for k, v in _SHAPES.items()
            if k[0].startswith(prefix) and os.path.exists(k[0])}
    try:
        path = _shapes_file(d)
        with replacing(path, tmp=f"{path}.tmp-{os.getpid()}") as tmp:
            with open(tmp, "w") as fh:
                json.dump(data, fh)
    except OSError:
        pass  # a read-only archive: the in-memory cache still serves this process


def table_glob(root: str, table: str) -> str:
    """DuckDB glob of a table's files (both layouts; use :func:`read_sql` to read them)."""
    return os.path.join(root, table, "**", "*.parquet").replace("'", "''")
