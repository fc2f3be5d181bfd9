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
alone unless ``include_today``; a redelivery that lands in a compacted day
later writes a small file whose range overlaps the compacted one, read
deduplicated, and folded in by the next compaction.  One compaction runs at a
time per archive (an ``flock`` on ``<archive>/.compact.lock``).
"""

from __future__ import annotations

import fcntl
import os
import re
from datetime import datetime, timezone

from collector import schema
from collector.archive import SCHEMA_DATE, SCHEMA_FILE, ArchiveError, _fsync_dir, partition_key

#: Rows per row group of a compacted file: small enough that a ``node = ?``
#: filter over files sorted by node skips most groups, large enough that a
#: scan is not dominated by per-group overhead.
ROW_GROUP_ROWS = 16_384
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
}


def compacted_name(first: int, last: int) -> str:
    return f"{PREFIX}-{first:012d}-{last:012d}.parquet"


def _partitions(root: str, table: str):
    """(directory, [data files]) of a table, schema file and hidden files left out."""
    for dirpath, _dirs, files in os.walk(os.path.join(root, table)):
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
    sort = ", ".join(f'"{c}"' for c in SORT[table] if c in have) or "1"
    tb = con.sql(f"SELECT {star} FROM {src} "
                     f"QUALIFY row_number() OVER (PARTITION BY {keys}{order}) = 1 "
                     f"ORDER BY {sort}").to_arrow_table()
    # Keep the archive's portable types (BIGINT sequences, µs UTC timestamps).
    want = ARROW_SCHEMAS[table]
    import pyarrow as pa
    fields = [want.field(n) if n in want.names else tb.schema.field(n) for n in tb.schema.names]
    return tb.cast(pa.schema(fields))


def _compact_dir(con, table: str, d: str, files: list[str], crash=None) -> dict:
    import pyarrow.parquet as pq
    ranges = [_RANGE.search(os.path.basename(f)) for f in files]
    first = min(int(m.group(1)) for m in ranges)
    last = max(int(m.group(2)) for m in ranges)
    out = os.path.join(d, compacted_name(first, last))
    tb = _read_partition(con, table, files)
    tmp = os.path.join(d, f"{_TMP}-{first:012d}-{last:012d}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(tb, fh, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                           write_statistics=True)
            fh.flush()
            os.fdatasync(fh.fileno())
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


def _step(crash, name):
    if crash is not None:
        crash(name)


def compact(root: str | os.PathLike, *, include_today: bool = False, tables=None,
            today: str | None = None, crash=None, progress=None) -> list[dict]:
    """Compact every closed day's partitions of the archive at ``root``.

    Returns one dict per compacted directory (table, dir, inputs, rows,
    file).  A directory with one file already compacted, or with files not
    named by the collector (no sequence range: readers dedupe those by key
    across the table, and a range would hide them), is left alone.
    ``crash(step)`` is called after each step (tests kill the process there).
    """
    import duckdb

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
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        done = []
        for table in tables or schema.ARCHIVE_TABLES:
            for d, files, stale in _partitions(root, table):
                for f in stale:  # a killed compaction's hidden file: never read
                    os.unlink(f)
                _cluster, date = partition_key(os.path.join(d, "x"))
                if date in ("", SCHEMA_DATE) or (date >= today and not include_today):
                    continue
                if len(files) == 1 and os.path.basename(files[0]).startswith(PREFIX):
                    continue  # already compacted
                if not files or not all(_RANGE.search(os.path.basename(f)) for f in files):
                    continue
                try:
                    res = _compact_dir(con, table, d, files, crash)
                except (OSError, duckdb.Error) as exc:
                    raise ArchiveError(f"cannot compact {d}: {exc}; the archive is unchanged "
                                       "or read deduplicated; free space or fix permissions "
                                       "and run compact again") from exc
                done.append(res)
                if progress:
                    progress(res)
        con.close()
        return done
    finally:
        lock.close()
