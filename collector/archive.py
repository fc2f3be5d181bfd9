"""The Parquet archive: the immutable event store of record.

Layout (``schema.ARCHIVE_TABLES``)::

    <archive>/<table>/cluster=<c>/date=<YYYY-MM-DD>/<consumer>-<first:012d>-<last:012d>.parquet

Hive-partitioned, plain Parquet (zstd, microsecond UTC timestamps), readable
as-is by DuckDB, Spark and Trino.  The ``cluster`` column lives only in the
partition path (%-escaped like Hive; read it with ``hive_partitioning`` and
``hive_types={'cluster': VARCHAR}`` so a cluster named "001" stays a string).  Each file is written under a temporary
name, fsynced, renamed into place and its directory fsynced, so a reader
never sees half a file.  The ``date`` is the day the stream received the
message (UTC), so a replay writes into the same partition.

A crash between this write and the DuckDB commit leaves a file whose rows
come again after redelivery: readers dedupe on ``schema.KEYS``
(:func:`read_sql` does).
"""

from __future__ import annotations

import glob
import os
import re

import pyarrow.parquet as pq

from collector import schema
from collector.columns import ARROW_SCHEMAS
from collector.errors import CollectorError
from emitter.fsutil import replacing


class ArchiveError(CollectorError):
    """The Parquet archive could not be written or read."""


_CONSUMER_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_name(consumer: str, first_seq: int, last_seq: int) -> str:
    return f"{_CONSUMER_SAFE.sub('_', consumer)}-{first_seq:012d}-{last_seq:012d}.parquet"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        except OSError as exc:
            raise ArchiveError(f"cannot create the archive directory {self.root}: {exc}; "
                               "choose another --archive") from exc

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
                    d = os.path.join(self.root, table, f"cluster={cluster}", f"date={date}")
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

        # hidden while partial: readers glob *.parquet
        with replacing(path, error, tmp=os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")) as tmp:
            os.makedirs(d, exist_ok=True)
            with open(tmp, "wb") as fh:
                pq.write_table(tb, fh, compression=self.compression,
                               compression_level=1 if self.compression == "zstd" else None)
                if self.fsync:
                    fh.flush()
                    os.fdatasync(fh.fileno())
        return path

    def close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def files(self, table: str) -> list[str]:
        return sorted(glob.glob(os.path.join(self.root, table, "cluster=*", "date=*", "*.parquet")))


def table_glob(root: str, table: str) -> str:
    return os.path.join(root, table, "**", "*.parquet").replace("'", "''")


def read_sql(root: str, table: str) -> str:
    """SQL over one archived table, deduplicated on its key, in schema column
    order (or an empty relation with the right columns when nothing is there).

    Among duplicate keys the row with the lowest ``stream_seq`` wins where the
    table has one (what the live store's INSERT OR IGNORE keeps); otherwise the
    rows are identical copies and any one will do.
    """
    sch = ARROW_SCHEMAS[table]
    cols = ", ".join(f'"{f.name}"' for f in sch)
    files = glob.glob(os.path.join(root, table, "cluster=*", "date=*", "*.parquet"))
    if not files:
        return f"SELECT {cols} FROM ({_empty_sql(table)})"
    # Files written before a column was added lack it: NULL, or for a key
    # column the documented default (journal.chain: '' = before chain ids).
    have = {"cluster"}  # only in the partition path
    for f in files:
        have.update(pq.read_schema(f).names)
    from collector.columns import COLUMNS
    exprs = []
    for name, typ, _ in COLUMNS[table]:
        default = _KEY_DEFAULTS.get((table, name))
        if name not in have:
            exprs.append(f'CAST({default or "NULL"} AS {typ}) AS "{name}"')
        elif default is not None:
            exprs.append(f'coalesce("{name}", {default}) AS "{name}"')
        else:
            exprs.append(f'"{name}"')
    keys = ", ".join(schema.KEYS[table])
    order = "stream_seq" if "stream_seq" in sch.names else "_file"
    src = (f"read_parquet('{table_glob(root, table)}', hive_partitioning=true, "
           f"hive_types={{'cluster': VARCHAR, 'date': DATE}}, union_by_name=true, filename=true)")
    return (f"SELECT {cols} FROM (SELECT {', '.join(exprs)}, filename AS _file FROM {src}) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1")


#: (table, key column) -> SQL value for rows archived before the column existed.
_KEY_DEFAULTS = {("journal", "chain"): "''"}


def _empty_sql(table: str) -> str:
    from collector.columns import COLUMNS
    cols = ", ".join(f"CAST(NULL AS {ty}) AS {c}" for c, ty, _ in COLUMNS[table])
    return f"SELECT {cols} WHERE false"
