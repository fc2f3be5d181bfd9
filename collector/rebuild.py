"""Rebuild the DuckDB store from the Parquet archive or from the stream.

Both write a NEW file (``<db>.rebuild-<pid>``) and rename it over ``db`` only
when complete, so an interrupted rebuild leaves the old store untouched.

* from the archive: every table is loaded with one ``INSERT ... SELECT``
  over its Parquet files, deduplicated on ``schema.KEYS`` keeping the lowest
  ``stream_seq`` (what the live store kept: ``collector.dedup``), into an
  empty table (so the archive's own dedup is the whole dedup);
  ``journal.ts`` (store only) is derived from each record as the live
  store does;
* from the stream: an ephemeral ordered pass over the whole stream through
  the same decode + commit path as the live collector (row values depend
  only on the message and its stream metadata, so results are identical).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from collector import archive as arch
from collector import schema
from collector.columns import NAMES
from collector.dedup import JOURNAL_TS_SQL
from collector.errors import CollectorError
from collector.store import Store

REBUILD_TABLES = [t for t in schema.TABLES if t != "ingest_state"]


class RebuildError(CollectorError):
    """The store could not be rebuilt."""


class Progress:
    """A one-line progress bar on stderr (a line per 10 % when not a TTY)."""

    def __init__(self, total: int, label: str, stream=None, enabled: bool = True):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self._last_decile = -1
        self.t0 = time.monotonic()

    def update(self, n: int = 1, note: str = ""):
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        if self.tty:
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {self.done}/{self.total} {note}   ")
            self.stream.flush()
        else:
            dec = int(frac * 10)
            if dec != self._last_decile:
                self._last_decile = dec
                self.stream.write(f"{self.label}: {frac:.0%} ({self.done}/{self.total}) {note}\n")
                self.stream.flush()

    def close(self):
        if self.enabled:
            took = time.monotonic() - self.t0
            self.stream.write(("\n" if self.tty else "") + f"{self.label}: done in {took:.1f}s\n")
            self.stream.flush()


def _fresh_path(db: str) -> str:
    tmp = f"{db}.rebuild-{os.getpid()}"
    for p in (tmp, tmp + ".wal"):
        if os.path.exists(p):
            os.unlink(p)
    return tmp


def _install(tmp: str, db: str) -> None:
    if os.path.exists(db + ".wal"):
        os.unlink(db + ".wal")
    os.replace(tmp, db)


def from_archive(archive_dir: str, db: str, progress: bool = True) -> dict:
    """Rebuild ``db`` from the archive; returns {table: rows}."""
    if not os.path.isdir(archive_dir):
        raise RebuildError(f"archive {archive_dir} does not exist: pass the --archive the collector wrote")
    tmp = _fresh_path(db)
    counts = {}
    bar = Progress(len(REBUILD_TABLES), "rebuild from archive", enabled=progress)
    store = Store(tmp, consumer="rebuild")
    try:
        con = store.con
        for table in REBUILD_TABLES:
            cols = ", ".join(NAMES[table])
            src = arch.read_sql(archive_dir, table)  # one row per key
            if table == "journal":
                con.execute(f"INSERT INTO {table} ({cols}, ts) SELECT {cols}, {JOURNAL_TS_SQL} FROM ({src})")
            else:
                con.execute(f"INSERT INTO {table} ({cols}) {src}")
            counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            bar.update(1, f"{table}: {counts[table]} rows")
        last = con.execute("SELECT max(stream_seq) FROM dead_letters").fetchone()[0] or 0
        for t in ("hook_runs", "script_runs"):
            last = max(last, con.execute(f"SELECT coalesce(max(stream_seq), 0) FROM {t}").fetchone()[0])
        con.execute("INSERT INTO ingest_state VALUES ('rebuild', ?, now())", [int(last)])
        store.close(snapshot=False)
    except Exception as exc:
        err = _abandon(store, tmp, exc, archive_dir)
        if err is exc:
            raise
        raise err from exc
    bar.close()
    _install(tmp, db)
    return counts


def _abandon(store, tmp: str, exc: Exception, source: str) -> Exception:
    """Drop the half-built file (the live store was never touched); the error to raise."""
    store.close(snapshot=False)
    for p in (tmp, tmp + ".wal"):
        if os.path.exists(p):
            os.unlink(p)
    if isinstance(exc, CollectorError):
        return exc
    return RebuildError(f"rebuild from {source} failed: {exc}")


def from_stream(nats_url: str, db: str, archive_dir: str | None = None, batch: int = 1024,
                progress: bool = True, creds: str | None = None, timeout: float = 5.0,
                auth=None) -> dict:
    """Rebuild ``db`` by reading the whole stream again (an ephemeral consumer).

    ``auth``: a :class:`collector.config.NatsAuth` (nkey, user/password, TLS);
    ``creds`` alone is the short form of ``NatsAuth(creds=...)``."""
    from collector.config import NatsAuth, nats_options
    opts = nats_options(auth if auth is not None else NatsAuth(creds=creds), nats_url, "hookscope-rebuild",
                        timeout)
    tmp = _fresh_path(db)
    store = Store(tmp, consumer="rebuild")
    archive = arch.Archive(archive_dir, consumer="rebuild") if archive_dir else None
    try:
        n = asyncio.run(_replay(opts, store, archive, batch, progress, timeout))
        counts = store.counts()
        store.close(snapshot=False)
    except Exception as exc:
        err = _abandon(store, tmp, exc, f"the stream at {nats_url}")
        if err is exc:
            raise
        raise err from exc
    finally:
        if archive is not None:
            archive.close()
    _install(tmp, db)
    counts["messages"] = n
    return counts


async def _replay(opts, store, archive, batch, progress, timeout):
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from collector.consumer import build_batch
    from collector.pull import Puller
    from emitter import contract as C
    from emitter.natsio import close, connect

    nc = await connect(opts)
    try:
        js = nc.jetstream(timeout=timeout)
        info = await js.stream_info(C.STREAM_NAME)
        last = info.state.last_seq
        total = info.state.messages
        cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                             inactive_threshold=60.0, max_ack_pending=-1)
        # The collector's own pull loop (one byte-limited request at a time),
        # on an ephemeral consumer the server names and deletes after use.
        cinfo = await js.add_consumer(C.STREAM_NAME, cfg)
        puller = await Puller(nc, C.STREAM_NAME, cinfo.name, batch).start()
        bar = Progress(total, "rebuild from stream", enabled=progress)
        done = 0
        seen_last = 0
        while seen_last < last:
            msgs = await puller.fetch(timeout)
            if not msgs:
                break  # nothing more within the deadline (messages expired or deleted)
            b, (parts, tables) = build_batch(msgs, "rebuild", archive is not None, C.MAX_MESSAGE_BYTES)
            if archive is not None:
                archive.write(parts, b.first_seq, b.last_seq)
            store.commit(tables, b.last_seq)
            seen_last = max(seen_last, b.last_seq)
            done += len(msgs)
            bar.update(len(msgs))
        bar.close()
        await puller.close(nak=False)
        try:
            await js.delete_consumer(C.STREAM_NAME, cinfo.name)
        except Exception:  # noqa: BLE001 - inactive_threshold removes it anyway
            pass
        return done
    finally:
        await close(nc)
