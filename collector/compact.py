"""Compact the Parquet archive: one file per (table, date, cluster) partition.

The collector writes one file per fetch per table per partition, so a busy
day holds thousands of small files and opening the archive costs a schema
read per file.  :func:`compact` rewrites each closed day's partition
directory into one file, deduplicated on ``schema.KEYS`` exactly as readers
dedupe (the lowest ``stream_seq`` wins where the table has one), sorted by
(node, time) and cut into row groups of :data:`ROW_GROUP_ROWS` rows, so a
``node = ?`` filter skips most row groups by their min/max statistics.

Crash safety rests on the readers' rule (``queries.source._suspects``): files
of one partition whose stream-sequence ranges overlap are read deduplicated.
The compacted file is named ``@compact-<first>-<last>.parquet`` with the
lowest first and highest last sequence of its inputs, so it overlaps every
input.  The steps are:

1. write it under a hidden name (readers skip dot files) and fsync it;
2. rename it into place and fsync the directory: readers now see it beside
   its inputs, all overlapping, so every key is read once;
3. unlink the inputs, then fsync the directory.

A kill -9 at any point leaves the inputs alone, or inputs plus a complete
compacted file (read deduplicated), or the compacted file alone: never a row
twice, never one missing.  Running compaction again finishes the job (the
name is the same, so the new file replaces the old one atomically) and
removes stale hidden files of a killed run.  ``@`` is never in a collector's
file name (``archive.file_name`` maps it to ``_``), so a batch can never
overwrite a compacted file.

Today's partitions (UTC), which the collector is still writing, are left
alone unless ``include_today`` or ``open_files``; a redelivery that lands in
a compacted day later writes a small file whose range overlaps the compacted
one, read deduplicated, and folded in by the next compaction.  One compaction
runs at a time per archive (an ``flock`` on ``<archive>/.compact.lock``).

Open partitions (``open_files=N``, what the collector's own compactor,
:mod:`collector.autocompact`, passes) are bounded without rewriting the whole
day at every step (:func:`plan`, size-tiered as in LSM stores): when more
than N collector files sit in one, those files alone become one ``@compact``
file; when :data:`FANOUT` ``@compact`` files of one size level (level =
floor(log_FANOUT(bytes))) sit there, they become one file of the next level.
So an open partition holds at most N files plus FANOUT - 1 per size level
between passes (a day of 1 MB merges growing to 1 GB spans 5 levels), and
each row is rewritten about once per level, not once per merge.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
from datetime import datetime, timezone

from collector import schema
from collector.archive import (SCHEMA_DATE, SCHEMA_FILE, ArchiveError, _fsync_dir, file_name, partition_key,
                               write_parquet)

#: Rows per row group of a compacted file: small enough that a ``node = ?``
#: filter over files sorted by node skips most groups, large enough that a
#: scan is not dominated by per-group overhead.
ROW_GROUP_ROWS = 16_384
#: The codec of compacted files.  A knob with a measured cost: snappy
#: decodes faster (``drains``, a full-year scan, 1.13-1.23x faster at 10 M
#: script runs in two runs) but writes 1.51x the bytes of zstd; zstd keeps
#: the sizing of docs/collector.md (docs/benchmarks.md "Archive queries at
#: 10 M script runs"; ``bench_queries.py --compact --codecs snappy,zstd``).
COMPRESSION = "zstd"
#: Columns given a Parquet Bloom filter in compacted files: the equality
#: lookups of ``queries/`` (a hook's scripts by ``hook_id``, a job's runs by
#: ``job_id``, boot-time runs by ``context``, a script version by ``sha256``)
#: then skip the row groups that lack the value, which min/max statistics
#: cannot tell when the value lies inside the group's range.  Each costs
#: 1-2 bytes per row of its group (5 % false positives, sized by pyarrow);
#: ``tests/bench/bench_queries.py --compact`` prints their share of the bytes.
BLOOM = {
    "hook_runs": ("hook_id", "job_id", "context", "node"),
    "script_runs": ("hook_id", "job_id", "context", "node", "sha256"),
    "span_events": ("span_id", "hook_id"),
    "journal": ("hook_id",),
}
BLOOM_FPP = 0.05
#: Parquet encoding of the compacted files' time columns (no dictionary):
#: sorted by (node, time), a node's times rise, so the deltas pack in few
#: bits.  Measured on 40 compacted days of script_runs at 10 M runs a year:
#: 14 % fewer bytes than dictionary+zstd, a scan of one script's runs 1.3x
#: faster, a node lookup 1.1x (docs/benchmarks.md "Archive queries, session
#: 8").  DuckDB, pyarrow, polars and Spark read it (the interop tier).
TIME_ENCODING = "DELTA_BINARY_PACKED"
#: ``@compact`` files of one size level that an open partition's pass merges into one.
FANOUT = 4
PREFIX = "@compact"
_RANGE = re.compile(r"-(\d{12})-(\d{12})\.parquet$")
_TMP = ".@compact"

#: table -> sort columns after ``node`` (the time, or the key order where the
#: table has no time); a column the files lack is skipped.
SORT = {
    "hook_runs": ("node", "start_ts", "hook_id"),
    "script_runs": ("node", "start_ts", "span_id"),
    "span_events": ("node", "ts", "span_id", "idx"),
    "gpu_samples": ("node", "ts", "gpu_index"),
    "node_events": ("node", "ts", "event_id"),
    "journal": ("node", "chain", "seq"),
    "chain_heads": ("node", "chain", "seq", "ts"),
    "dead_letters": ("received_ts", "stream_seq"),
    "raw": ("stream_seq",),  # the messages as received: no node column
}


def compacted_name(first: int, last: int) -> str:
    return f"{PREFIX}-{first:012d}-{last:012d}.parquet"


def level(size: int, fanout: int = FANOUT) -> int:
    """A file's size level: files within a factor ``fanout`` share one."""
    return int(math.log(max(size, 1), fanout))


def plan(names: list[str], *, open_files: int | None = None, sizes: dict | None = None,
         fanout: int = FANOUT) -> list[str] | None:
    """The files of one partition directory to merge now (None: leave it).

    ``open_files`` None: a closed day, everything becomes one file.  Else an
    open partition: its collector files once there are more than
    ``open_files`` of them, or the ``@compact`` files of the lowest size
    level (``sizes``: name -> bytes) holding ``fanout`` of them.  A
    directory holding a file without a sequence range (not written by a collector: readers dedupe such files by
    key across the table, and a range would hide them) is left alone."""
    if not names or not all(_RANGE.search(n) for n in names):
        return None
    comp = [n for n in names if n.startswith(PREFIX)]
    if open_files is None:
        return None if len(names) == 1 and comp else list(names)
    small = [n for n in names if not n.startswith(PREFIX)]
    if len(small) > open_files:
        return small
    by_level: dict[int, list[str]] = {}
    for n in comp:
        by_level.setdefault(level((sizes or {}).get(n, 1), fanout), []).append(n)
    for lv in sorted(by_level):
        if len(by_level[lv]) >= fanout:
            return by_level[lv]
    return None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 1


def _dated_dirs(root: str, table: str, since: str | None):
    """The directories under a table to walk: all, or (``since``) only the
    ``date=`` directories of that day or later, so a pass over open
    partitions does not list a year of closed ones (the old layout,
    ``cluster=``/``date=``, is always walked whole)."""
    top = os.path.join(root, table)
    if since is None:
        return [top]
    try:
        entries = os.listdir(top)
    except FileNotFoundError:
        return []
    return [os.path.join(top, e) for e in sorted(entries)
            if not e.startswith("date=") or (e[5:] >= since and e[5:] != SCHEMA_DATE)]


def _partitions(root: str, table: str, since: str | None = None):
    """(directory, [data files]) of a table, schema file and hidden files left out."""
    for top in _dated_dirs(root, table, since):
        yield from _walk(top)


def _walk(top: str):
    for dirpath, _dirs, files in os.walk(top):
        data = sorted(os.path.join(dirpath, f) for f in files
                      if f.endswith(".parquet") and not f.startswith(".") and f != SCHEMA_FILE)
        stale = [os.path.join(dirpath, f) for f in files if f.startswith(_TMP)]
        if data or stale:
            yield dirpath, data, stale


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _read_partition(con, table: str, files: list[str]):
    """The rows of these files (their own columns, no Hive keys), one per key."""
    import pyarrow.parquet as pq

    from collector.archive import _KEY_DEFAULTS
    from collector.columns import ARROW_SCHEMAS
    have: list[str] = []
    for f in files:
        for n in pq.read_schema(f).names:
            if n not in have:
                have.append(n)
    lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
    src = f"read_parquet({lst}, hive_partitioning=false, union_by_name=true)"
    # A key column missing from older files reads as its documented default,
    # as the readers do (journal.chain: '').
    repl = [f'coalesce("{c}", {_KEY_DEFAULTS[(table, c)]}) AS "{c}"'
            for c in have if (table, c) in _KEY_DEFAULTS]
    star = "*" + (f" REPLACE ({', '.join(repl)})" if repl else "")
    # In the old layout ``cluster`` is only in the path: constant in a directory.
    keys = ", ".join(f'"{k}"' for k in schema.KEYS[table] if k in have) or "1"
    order = ' ORDER BY "stream_seq"' if "stream_seq" in have else ""
    sort = ", ".join(f'"{c}"' for c in SORT.get(table, schema.KEYS[table]) if c in have) or "1"
    tb = con.sql(f"SELECT {star} FROM {src} "
                     f"QUALIFY row_number() OVER (PARTITION BY {keys}{order}) = 1 "
                     f"ORDER BY {sort}").to_arrow_table()
    # Keep the archive's portable types (BIGINT sequences, µs UTC timestamps).
    want = ARROW_SCHEMAS[table]
    import pyarrow as pa
    fields = [want.field(n) if n in want.names else tb.schema.field(n) for n in tb.schema.names]
    return tb.cast(pa.schema(fields))


def _compact_dir(con, table: str, d: str, files: list[str], crash=None) -> dict:
    ranges = [_RANGE.search(os.path.basename(f)) for f in files]
    first = min(int(m.group(1)) for m in ranges)
    last = max(int(m.group(2)) for m in ranges)
    out = os.path.join(d, compacted_name(first, last))
    if out not in files and os.path.exists(out):
        # A partial merge (open partition) named like a file it does not
        # read: the rename would drop that file's rows, so read it too.
        files = [*files, out]
    tb = _read_partition(con, table, files)
    tmp = os.path.join(d, f"{_TMP}-{first:012d}-{last:012d}.tmp-{os.getpid()}")
    try:
        write_parquet(tb, tmp, True, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS,
                      write_statistics=True, **_layout_options(table, tb))
        _step(crash, "written")
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)
    _step(crash, "renamed")
    for f in files:
        if f != out:
            os.unlink(f)
            _step(crash, "unlinked")
    _fsync_dir(d)
    return {"table": table, "dir": d, "inputs": len(files), "rows": tb.num_rows, "file": out}


def _layout_options(table: str, tb) -> dict:
    """Bloom filters (:data:`BLOOM`) and the ``sorting_columns`` footer entry
    saying the rows are sorted by :data:`SORT` (ascending, NULLs last, as
    DuckDB's ORDER BY put them), for the columns this file has; the time
    columns in :data:`TIME_ENCODING`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = tb.schema.names
    ndv = max(1, min(tb.num_rows, ROW_GROUP_ROWS))
    bloom = {c: {"ndv": ndv, "fpp": BLOOM_FPP} for c in BLOOM.get(table, ()) if c in names}
    sort = [c for c in SORT.get(table, schema.KEYS[table]) if c in names]
    opts: dict = {"bloom_filter_options": bloom} if bloom else {}
    times = [f.name for f in tb.schema if pa.types.is_timestamp(f.type)]
    if times and TIME_ENCODING:
        opts["column_encoding"] = {c: TIME_ENCODING for c in times}
        opts["use_dictionary"] = [p for p in _leaf_paths(tb.schema) if p not in times]
    if sort:
        opts["sorting_columns"] = [pq.SortingColumn(names.index(c), nulls_first=False) for c in sort]
    return opts


def _leaf_paths(schema) -> list[str]:
    """The Parquet column paths of an Arrow schema (a list column ``x`` is
    ``x.list.element``, as pyarrow names it), for per-column options."""
    import pyarrow as pa

    def walk(name, typ):
        if pa.types.is_struct(typ):
            return [p for i in range(typ.num_fields) for p in walk(f"{name}.{typ.field(i).name}", typ.field(i).type)]
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            return walk(f"{name}.list.element", typ.value_type)
        return [name]
    return [p for f in schema for p in walk(f.name, f.type)]


def _step(crash, name):
    if crash is not None:
        crash(name)


def compact(root: str | os.PathLike, *, include_today: bool = False, tables=None,
            today: str | None = None, crash=None, progress=None,
            open_files: int | None = None, closed: bool = True, skip=None,
            on_error=None, own: str | None = None) -> list[dict]:
    """Compact every closed day's partitions of the archive at ``root``.

    Returns one dict per compacted directory (table, dir, inputs, rows,
    file).  A directory with one file already compacted, or with files not
    named by the collector (no sequence range: readers dedupe those by key
    across the table, and a range would hide them), is left alone.
    ``today``: the first open day (default: today, UTC).  ``open_files``:
    bound open partitions too (:func:`plan`); ``closed=False``: only them.
    ``skip(name)``: a file name not to touch (a batch whose DuckDB commit has
    not succeeded yet).  ``on_error(exc)``: called with a directory's
    :class:`ArchiveError`, then the next directory is tried (default: raise).
    ``own``: a collector instance name: in open partitions only its own
    files (and ``@compact`` ones) are merged, for another collector sharing
    the archive may yet delete a batch file its store refused.
    ``crash(step)`` is called after each step (tests
    kill the process there).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ArchiveError(f"archive {root} does not exist: pass the --archive the collector writes")
    today = today or datetime.now(timezone.utc).date().isoformat()
    lock = open(os.path.join(root, ".compact.lock"), "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ArchiveError(f"another compaction of {root} is running "
                               f"(it holds {root}/.compact.lock): wait for it to finish") from None
        con = _LazyConnection()  # most automatic passes merge nothing: no DuckDB start-up
        try:
            return _compact_all(con, root, tables or schema.ARCHIVE_TABLES, today, crash, progress,
                                None if include_today else open_files, closed, include_today, skip,
                                on_error, _own_files(own))
        finally:
            con.close()
    finally:
        lock.close()


class _LazyConnection:
    """An in-memory DuckDB connection opened at its first use (~25 ms)."""

    def __init__(self):
        self._con = None

    def sql(self, query):
        if self._con is None:
            import duckdb
            self._con = duckdb.connect(":memory:")
            self._con.execute("SET TimeZone = 'UTC'")
            self._con.execute("SET enable_progress_bar = false")  # a long merge drew on stderr
        return self._con.sql(query)

    def close(self):
        if self._con is not None:
            self._con.close()


def _own_files(own: str | None):
    """A pattern matching the file names collector ``own`` writes (None: any)."""
    if own is None:
        return None
    prefix = file_name(own, 0, 0)[:-len("000000000000-000000000000.parquet")]
    return re.compile(re.escape(prefix) + r"\d{12}-\d{12}\.parquet$")


#: Touched after every merge: long-lived readers (the dashboard) hold views
#: over explicit file lists, and reopen when this file's mtime moves.
MARKER = ".compacted"


def touch_marker(root: str) -> None:
    path = os.path.join(root, MARKER)
    with open(path, "a"):
        pass
    os.utime(path, None)


def _compact_all(con, root, tables, today, crash, progress, open_files, closed, include_today,
                 skip, on_error, own) -> list[dict]:
    done = []
    for table in tables:
        for d, files, stale in _partitions(root, table, None if closed else today):
            for f in stale:  # a killed compaction's hidden file: never read
                os.unlink(f)
            _cluster, date = partition_key(os.path.join(d, "x"))
            if date in ("", SCHEMA_DATE):
                continue
            is_open = date >= today and not include_today
            if (is_open and open_files is None) or (not is_open and not closed):
                continue
            names = [os.path.basename(f) for f in files]
            # an open partition may need a second merge (a new file completes
            # a size level): merge until the plan says nothing is due
            while names:
                res = _merge_due(con, table, d, names, is_open and open_files, skip, own, crash, on_error)
                if res is None:
                    break
                done.append(res)
                touch_marker(root)
                if progress:
                    progress(res)
                if not is_open:
                    break
                names = [n for n in sorted(os.listdir(d)) if n.endswith(".parquet")
                         and not n.startswith(".") and n != SCHEMA_FILE]
    return done


def _merge_due(con, table, d, names, open_files, skip, own, crash, on_error) -> dict | None:
    """Merge what :func:`plan` says is due in directory ``d`` (None: nothing,
    or an error reported to ``on_error``)."""
    import duckdb

    if skip is not None:
        names = [n for n in names if not skip(n)]
    if open_files and own is not None:
        names = [n for n in names if n.startswith(PREFIX) or own.match(n)]
    sizes = {n: _size(os.path.join(d, n)) for n in names if n.startswith(PREFIX)} if open_files else None
    todo = plan(names, open_files=open_files or None, sizes=sizes)
    if not todo:
        return None
    try:
        return _compact_dir(con, table, d, [os.path.join(d, n) for n in todo], crash)
    except (OSError, ValueError, duckdb.Error) as exc:  # pyarrow: ArrowInvalid is a ValueError
        err = ArchiveError(f"cannot compact {d}: {exc}; the archive is unchanged "
                           "or read deduplicated; free space or fix permissions "
                           "and run compact again")
        if on_error is None:
            raise err from exc
        on_error(err)
        return None
