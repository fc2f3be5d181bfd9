"""The DuckDB writer: one connection, Arrow batches, one transaction per batch.

Rows are loaded from Arrow by ``collector.dedup``: only rows whose key
(``schema.KEYS``) is not stored yet, looked up among the stored rows of the
batch's time range (no key index: memory does not grow with history), so a
redelivered or replayed message inserts nothing twice, and ``ingest_state``
moves in the SAME transaction as the rows: after a crash the file holds
either the whole batch and its sequence, or neither.  A version-1 store (with
PRIMARY KEYs) is migrated when opened (``collector.migrate``).

Readers: DuckDB lets one process open a file for writing and nobody else at
the same time, so the store publishes a read-only snapshot next to it
(``schema.snapshot_path``: a catalog of views over Parquet parts cut from the
live tables, ``collector.snapshot``) at most every ``snapshot_interval``
seconds and when ingest goes idle.  A publication cuts only the rows since the
last sealed part, so its cost does not grow with history.  See docs/store.md
for the freshness bound.
"""

from __future__ import annotations

import os
import threading
import time

import duckdb

from collector import dedup, migrate, schema
from collector.columns import NAMES
from collector.snapshot import SEAL_ROWS, SplitSnapshot, snapshot_dir
from collector.errors import CollectorError


#: Most WAL between two checkpoints: the store checkpoints after a commit,
#: and before a snapshot publication cuts, once the WAL reaches its interval
#: (``Store.checkpoint_wal_bytes``; DuckDB's own threshold is set to 1GB so
#: that no commit checkpoints in the middle of a batch).  A checkpoint costs
#: about the same for 16 MB of WAL as for 64 MB (DuckDB writes the partly
#: filled last row group of each table again, and analyses its strings): on
#: 270,000 spans, commits and the last checkpoint took 19.8 µs/span with
#: 64 MB and 14.6 with 256 MB, and the file was 116 against 83 MB
#: (tests/bench/bench_checkpoint.py; docs/benchmarks.md "Checkpoint
#: interval, session 12").
CHECKPOINT_WAL_BYTES = 256 << 20
#: The least: rows written since the last checkpoint stay in memory
#: (``IN_MEMORY_TABLE``, within DuckDB's memory_limit), so the interval is at
#: most 1/CHECKPOINT_WAL_SHARE of the limit, and never below this.
MIN_CHECKPOINT_WAL_BYTES = 64 << 20
CHECKPOINT_WAL_SHARE = 8
_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def checkpoint_wal_bytes(limit_bytes: int | None) -> int:
    """The WAL interval for DuckDB's memory limit ``limit_bytes`` (None: not known)."""
    least = min(MIN_CHECKPOINT_WAL_BYTES, CHECKPOINT_WAL_BYTES)
    if not limit_bytes:
        return least
    return max(least, min(CHECKPOINT_WAL_BYTES, limit_bytes // CHECKPOINT_WAL_SHARE))


def parse_size(text: str) -> int | None:
    """Bytes of a DuckDB size setting as it prints it ("488.2 MiB", "1.8 GiB"); None if not one."""
    num, _, unit = str(text).strip().partition(" ")
    try:
        return int(float(num) * _UNITS[unit.strip()])
    except (KeyError, ValueError):
        return None


class StoreError(CollectorError):
    """The DuckDB store could not be opened or written."""


class StoreLocked(StoreError):
    """Another process holds the DuckDB file for writing."""


class Store:
    """The live DuckDB file, written by exactly one collector process."""

    def __init__(self, path: str | os.PathLike, consumer: str = "collector",
                 snapshot_interval: float = 2.0, threads: int | None = None,
                 memory_limit: str | None = None, seal_rows: int = SEAL_ROWS):
        self.path = os.fspath(path)
        self.consumer = consumer
        self.snapshot_interval = float(snapshot_interval)
        if self.snapshot_interval < 0:
            raise StoreError(f"snapshot interval must be >= 0 seconds, got {snapshot_interval}")
        # what was asked for; snapshot_interval is it stretched after a slow publication
        self.base_snapshot_interval = self.snapshot_interval
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {parent}: {exc}; "
                             "choose another --db path") from exc
        if not os.path.exists(self.path):
            _create(self.path)
        try:
            self.con = duckdb.connect(self.path)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(f"{self.path} is open for writing by another process ({exc}); "
                                  "run one collector per DuckDB file (give each its own --db)") from exc
            if "not a valid" in str(exc).lower():
                raise StoreError(f"{self.path} is not a usable DuckDB file ({exc}); move it away and "
                                 "run 'hookscope rebuild' to recreate it from the archive") from exc
            raise StoreError(f"cannot open {self.path}: {exc}; check the path, free space and "
                             "permissions") from exc
        except duckdb.Error as exc:
            raise StoreError(f"{self.path} is not a usable DuckDB file ({exc}); move it away and "
                             "run 'hookscope rebuild' to recreate it from the archive") from exc
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            # DuckDB's default buffer pool is 80 % of the machine's RAM and it
            # keeps every block it touched cached up to that: a long-running
            # collector's RSS then grows with the store.  Capped, DuckDB evicts
            # (and spills to temp_directory) instead.
            try:
                self.con.execute("SET memory_limit = '" + str(memory_limit).replace("'", "''") + "'")
            except duckdb.Error as exc:
                self.con.close()
                raise StoreError(f"memory limit {memory_limit!r} refused by DuckDB: {exc}") from exc
        # Checkpoint after a commit (commit()) and before a publication, once
        # the WAL reaches checkpoint_wal_bytes, not inside a batch's commit.
        self.con.execute("SET checkpoint_threshold = '1GB'")
        self.checkpoint_wal_bytes = checkpoint_wal_bytes(
            parse_size(self.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]))
        try:
            todo = migrate.pending(self.con)
            schema.create_all(self.con)
            migrate.run(self.con, self.path, todo)
        except (OSError, duckdb.Error) as exc:
            self.con.close()
            raise StoreError(f"cannot migrate {self.path} to store version {schema.STORE_VERSION}: {exc}; "
                             "nothing was changed (one transaction): free space (a migration copies "
                             "each table once) and start again") from exc
        # POSIX record locks (DuckDB's single-writer lock) are dropped when the
        # process closes ANY descriptor of the file: never open the live path
        # again while DuckDB holds it.  This one descriptor, opened once and
        # closed after DuckDB, identifies the file (its inode) for the snapshot.
        self.con.execute("CHECKPOINT")
        self._fd = os.open(self.path, os.O_RDONLY)
        self._lock = threading.Lock()
        self.seal_rows = seal_rows
        self._split: SplitSnapshot | None = None  # made at the first publication
        # A previous run's catalog names a hot part this run will collect:
        # publish at the first chance (the idle check) even with nothing new.
        self._dirty = os.path.isdir(snapshot_dir(self.path))
        self._last_snapshot = 0.0
        self.last_commit_s = 0.0

    # ------------------------------------------------------------ writing
    def last_seq(self, consumer: str | None = None) -> int:
        row = self.con.execute("SELECT last_seq FROM ingest_state WHERE consumer = ?",
                               [consumer or self.consumer]).fetchone()
        return int(row[0]) if row else 0

    def commit(self, tables: dict, last_seq: int | None) -> None:
        """Insert Arrow tables {table: pa.Table} and move ingest_state, atomically."""
        t0 = time.perf_counter()
        try:
            self._commit(tables, last_seq)
        except duckdb.OutOfMemoryException:
            # Under memory_limit, what DuckDB cannot evict is what was
            # written since the last CHECKPOINT: the snapshot checkpoints
            # every checkpoint_wal_bytes of WAL, but a burst can outgrow the
            # limit before that.  Checkpoint and try once more.
            with self._lock:
                self.con.execute("CHECKPOINT")
            self._commit(tables, last_seq)
        if self._wal_bytes() >= self.checkpoint_wal_bytes:
            # Rows committed since the last CHECKPOINT live in memory (DuckDB's
            # IN_MEMORY_TABLE) until one.  The snapshot checkpoints too, but
            # its interval stretches with slow publications, and in between
            # that memory grew with ingest (docs/benchmarks.md "Bounded dedup").
            try:
                with self._lock:
                    self.con.execute("CHECKPOINT")
            except duckdb.FatalException:
                raise
            except duckdb.Error:
                pass  # the batch IS committed (ack it); tried again after the next commit
        self.last_commit_s = time.perf_counter() - t0

    def _commit(self, tables: dict, last_seq: int | None) -> None:
        with self._lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                for table, tb in tables.items():
                    if tb.num_rows:
                        dedup.insert(con, table, tb, NAMES[table])
                if last_seq is not None:
                    con.execute(
                        "INSERT INTO ingest_state VALUES (?, ?, now()) ON CONFLICT (consumer) DO UPDATE "
                        "SET last_seq = greatest(ingest_state.last_seq, excluded.last_seq), "
                        "updated_ts = excluded.updated_ts", [self.consumer, int(last_seq)])
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise
            self._dirty = True

    # ------------------------------------------------------------ reading
    def counts(self) -> dict:
        with self._lock:
            return {t: self.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema.TABLES}

    def _wal_bytes(self) -> int:
        try:  # stat by path opens nothing (see the lock note in __init__)
            return os.stat(self.path + ".wal").st_size
        except OSError:
            return 0

    def size_bytes(self) -> int:
        total = 0
        for p in (self.path, self.path + ".wal"):
            try:
                total += os.path.getsize(p)
            except OSError:
                pass
        return total

    # ------------------------------------------------------------ snapshot
    def maybe_snapshot(self, idle: bool = False, force: bool = False) -> bool:
        """Publish the read-only snapshot if due (debounced); True when written."""
        if not (self._dirty or force):
            return False
        now = time.monotonic()
        if not force and now - self._last_snapshot < self.snapshot_interval:
            return False
        self.snapshot()
        return True

    def snapshot(self) -> str:
        """Cut the new rows, publish the catalog (renamed into place).

        Readers that still have the old catalog open keep reading it (its
        parts stay for ``snapshot.GRACE_S`` seconds).
        """
        dst = schema.snapshot_path(self.path)
        t0 = time.monotonic()
        with self._lock:
            # The cut reads committed rows through this connection: it needs
            # no CHECKPOINT.  A checkpoint keeps the WAL short and what was
            # written evictable (see commit): once per checkpoint_wal_bytes
            # of WAL, not at every publication.
            if self._wal_bytes() >= self.checkpoint_wal_bytes:
                self.con.execute("CHECKPOINT")
            try:
                if self._split is None:
                    st = os.fstat(self._fd)
                    self._split = SplitSnapshot(self.con, self.path, (st.st_dev, st.st_ino),
                                                seal_rows=self.seal_rows)
                self._split.publish()
            except duckdb.FatalException:
                raise  # the store itself is invalidated: the collector stops on it
            except (OSError, duckdb.Error) as exc:
                # Never a "row refused" error (consumer_errors._is_data_error):
                # the batch was committed; nothing here is about its rows.
                raise StoreError(f"cannot publish the snapshot {dst}: {exc}; free space or fix "
                                 "permissions (the live store is unaffected)") from exc
            self._dirty = False
        # A publication is bounded by seal_rows, but a slow disk still gets
        # its interval stretched rather than the writer stalled: to 5x this
        # publication's time, and back to the asked-for interval once
        # publications are fast again (one slow day-close re-cut must not
        # leave readers staler for the collector's whole life).
        took = time.monotonic() - t0
        self._last_snapshot = time.monotonic()
        self.snapshot_interval = max(self.base_snapshot_interval, 5 * took)
        return dst

    def close(self, snapshot: bool = True) -> None:
        if self.con is None:
            return
        try:
            if snapshot and self._dirty:
                self.snapshot()
            else:
                self.con.execute("CHECKPOINT")
        except duckdb.FatalException:
            pass  # invalidated: the WAL holds every committed batch; reopening replays it
        finally:
            if self._split is not None:
                self._split.close()
            self.con.close()
            self.con = None
            os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _create(path: str) -> None:
    """A new store file, complete or not at all: DuckDB writes a new file's
    headers after creating it, and a collector killed in between left a file
    that no later start could open.  Made under a temporary name, then renamed."""
    tmp = f"{path}.creating-{os.getpid()}"
    for p in (tmp, tmp + ".wal"):
        if os.path.exists(p):
            os.unlink(p)
    try:
        con = duckdb.connect(tmp)
        try:
            schema.create_all(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not os.path.exists(path):  # another process may have won the race
            os.replace(tmp, path)
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except (OSError, duckdb.Error) as exc:
        raise StoreError(f"cannot create the store {path}: {exc}; check the path, free space and "
                         "permissions") from exc
    finally:
        for p in (tmp, tmp + ".wal"):
            if os.path.exists(p):
                os.unlink(p)
