"""The collector loop: durable JetStream pull consumer -> archive -> DuckDB -> ack.

Per batch (up to ``batch`` messages from one fetch):

1. decode every message (pure, ``collector.decode``) into one columnar batch;
   bad input becomes a dead letter, never an exception;
2. write the batch's Parquet files (fsync), then commit the rows and the
   stream sequence to DuckDB in one transaction (in a writer thread, so the
   next batch is fetched and decoded meanwhile: DuckDB and Parquet release the
   GIL);
3. publish each dead letter to ``contract.deadletter_subject(reason)``;
4. ack every message of the batch.

Nothing is acked before it is committed, so a crash anywhere means
redelivery, and redelivery inserts nothing twice (INSERT OR IGNORE on
``schema.KEYS``).  Several collectors may share the durable consumer (a work
queue): each needs its own DuckDB file and instance name; the Parquet
archive may be shared (file names carry the instance name).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from collector.archive import Archive
from collector.columns import Batch, check_rows
from collector.config import CollectorConfig
from collector.decode import DL_BAD_RECORD, DL_STORE_REJECTED, DeadLetter, decode_message, subject_parts
from collector.consumer_errors import _describe, _fatal_error, _is_data_error, _is_fatal, _is_timeout
from collector.errors import CollectorError
from collector.identity import check_msg_id_decoded as check_msg_id
from collector.metrics import Metrics
from collector.store import Store, StoreError
from emitter import EmitterError
from emitter import contract as C

log = logging.getLogger("hookscope.collector")


class _VisibleFilter(logging.Filter):
    """DuckDB's and NATS' error texts quote row values, i.e. script output and
    names a node sent: make control characters visible before any handler
    writes them to a terminal or a journal (emitter/safetext.py)."""

    def filter(self, record):
        from emitter.safetext import visible

        record.msg, record.args = visible(record.getMessage()), ()
        return True


log.addFilter(_VisibleFilter())

HDR_REASON = "Hookscope-Deadletter-Reason"
HDR_DETAIL = "Hookscope-Deadletter-Detail"
HDR_ORIG_SUBJECT = "Hookscope-Original-Subject"
HDR_ORIG_SEQ = "Hookscope-Original-Seq"


class ConsumerError(CollectorError):
    """The JetStream consumer could not be set up."""


def parse_reply(reply: str):
    """(stream_seq, received_ns, num_pending, num_delivered) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or
    the v2 form with domain and account hash in front.
    """
    t = reply.split(".")
    n = len(t)
    if n == 9:
        return int(t[5]), int(t[7]), int(t[8]), int(t[4])
    if n >= 11:
        return int(t[7]), int(t[9]), int(t[10]), int(t[6])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


def build_batch(msgs, instance: str, keep_raw: bool, max_bytes: int):
    """Decode fetched messages into a :class:`Batch` (+ per-message info).

    A message whose rows the Arrow conversion refuses (wrong field types) is
    isolated and dead-lettered; the rest of the batch goes on.
    """
    items = []
    for m in msgs:
        seq, rns, pending, delivered = parse_reply(m.reply)
        hdrs = m.headers or {}
        res = decode_message(m.data, m.subject, seq, rns, hdrs.get(C.HDR_SCHEMA), max_bytes)
        mid = hdrs.get(C.HDR_MSG_ID)
        if type(res) is not DeadLetter:
            res = check_msg_id(res, mid, m.subject, m.data)
        items.append((res, seq, m.subject, rns, m.data, mid, pending))
    batch = _fill(items, instance, keep_raw)
    try:
        arrow = batch.arrow()
    except Exception:
        for i, it in enumerate(items):
            why = check_rows(it[0])
            if why is not None:
                items[i] = (DeadLetter(DL_BAD_RECORD, why),) + it[1:]
        batch = _fill(items, instance, keep_raw)
        arrow = batch.arrow()
    batch.pending = items[-1][6] if items else 0
    batch.n_journal_errors = sum(getattr(it[0], "n_journal_errors", 0) for it in items)
    return batch, arrow


def _fill(items, instance, keep_raw):
    b = Batch(instance, keep_raw)
    for res, seq, subj, rns, data, mid, _ in items:
        parts = subject_parts(subj)
        b.add(res, seq, subj, rns, data, mid, parts[1] if parts else None)
    return b


class Collector:
    """One collector instance.  ``run()`` until ``stop()`` (or idle, with ``once``)."""

    def __init__(self, cfg: CollectorConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.store = Store(cfg.db, consumer=cfg.instance, snapshot_interval=cfg.snapshot_interval,
                           memory_limit=cfg.memory_limit)
        self.archive = Archive(cfg.archive, consumer=cfg.instance, fsync=cfg.fsync) if cfg.archive else None
        self.metrics.store_size_fn = self.store.size_bytes
        self._stop = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookscope-writer")
        self._archiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookscope-archiver")
        self.nc = None
        self.js = None
        self.psub = None
        self._last_nats_error = None
        #: set when DuckDB invalidated the store: run() stops and raises it
        self.fatal: StoreError | None = None
        self._step = "connect"

    def stop(self):
        self._stop.set()

    # ------------------------------------------------------------ NATS
    async def connect(self):
        """Connect, create the streams if missing, bind the durable consumer.

        All or nothing: a failure part-way (a cluster electing a new leader
        times out the stream/consumer calls) closes the connection and leaves
        ``nc``/``js``/``psub`` None, so the loop connects again with backoff
        instead of fetching on a consumer it never bound."""
        from emitter.natsio import close, connect, ensure_streams
        await self.close_nats()
        self._step = "connect"
        nc = await connect(self.cfg.nats_options(), error_cb=self._on_nats_error)
        try:
            self.nc, self.js, self.psub = nc, nc.jetstream(timeout=self.cfg.request_timeout), None
            await self._ensure_streams(ensure_streams)
            await self._ensure_consumer()
        except BaseException:
            self.nc = self.js = self.psub = None
            await close(nc)
            raise

    async def _on_nats_error(self, exc=None, *_a, **_k):
        # permission violations arrive here, not as the failing call's exception
        if isinstance(exc, BaseException):
            self._last_nats_error = _describe(exc)

    def _setup_error(self, exc) -> ConsumerError:
        why = _describe(exc)
        last = self._last_nats_error
        if last and last not in why:
            why += f"; server said: {last}"
        hint = ""
        if _is_timeout(exc) or any(w in why for w in ("ermission", "ServiceUnavailable", "NoResponders")):
            hint = (" (is JetStream enabled, and does this identity have the collector's permissions "
                    "from deploy/nats/gen_auth.py? see docs/security.md)")
        return ConsumerError(f"NATS at {self.cfg.nats_url}: streams/consumer not set up "
                             f"(at: {self._step}): {why}{hint}")

    async def _ensure_streams(self, ensure_streams):
        """Create the streams when missing; never re-configure existing ones
        (a collector started without --replicas must not shrink an R3 stream)."""
        from nats.js.errors import NotFoundError
        for name in (C.STREAM_NAME, C.DLQ_STREAM_NAME):
            self._step = f"stream info {name}"
            try:
                info = await asyncio.wait_for(self.js.stream_info(name), self.cfg.request_timeout)
                if name == C.STREAM_NAME:
                    await self._add_subjects(info)
            except NotFoundError:
                self._step = "create streams"
                await ensure_streams(self.js, replicas=self.cfg.replicas, timeout=self.cfg.request_timeout)
                return
            except Exception as exc:
                if name != C.DLQ_STREAM_NAME or not _is_timeout(exc):
                    raise
                # Consuming does not need it (dead letters are in the table first;
                # their DLQ copy is best effort): a DLQ stream still electing its
                # leader after a cluster node died must not hold the collector up.
                log.warning("stream %s did not answer within %.1fs; going on without checking it",
                            name, self.cfg.request_timeout)

    async def _add_subjects(self, info):
        """A stream made before the chain-heads subject existed gets it added;
        nothing else of an existing stream is changed."""
        have = list(info.config.subjects or [])
        missing = [x for x in C.STREAM_SUBJECTS + C.HEADS_SUBJECTS if x not in have]
        if missing:
            self._step = f"add subjects {missing} to {C.STREAM_NAME}"
            info.config.subjects = have + missing
            await asyncio.wait_for(self.js.update_stream(info.config), self.cfg.request_timeout)

    async def _ensure_consumer(self):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        cfg = ConsumerConfig(durable_name=self.cfg.durable, ack_policy=AckPolicy.EXPLICIT,
                             deliver_policy=DeliverPolicy.ALL, ack_wait=self.cfg.ack_wait,
                             max_ack_pending=self.cfg.max_ack_pending, max_deliver=-1,
                             num_replicas=self.cfg.replicas if self.cfg.replicas > 1 else None)
        self._step = f"create consumer {self.cfg.durable}"
        try:
            await asyncio.wait_for(self.js.add_consumer(C.STREAM_NAME, cfg), self.cfg.request_timeout)
        except Exception as exc:  # exists with other settings: bind to it as it is
            log.info("consumer %s not (re)created: %s", self.cfg.durable, exc)
            try:  # ... but only if it does exist (not a timeout of a leaderless cluster)
                await asyncio.wait_for(self.js.consumer_info(C.STREAM_NAME, self.cfg.durable),
                                       self.cfg.request_timeout)
            except Exception as exc2:
                raise ConsumerError(f"durable consumer {self.cfg.durable} on stream {C.STREAM_NAME} "
                                    f"could not be created ({type(exc).__name__}: {exc}) nor found "
                                    f"({type(exc2).__name__}: {exc2})") from None
        self.psub = await self.js.pull_subscribe_bind(self.cfg.durable, stream=C.STREAM_NAME)

    async def close_nats(self):
        from emitter.natsio import close
        nc, self.nc, self.js, self.psub = self.nc, None, None, None
        await close(nc)

    # ------------------------------------------------------------ loop
    async def run(self, once: bool = False, idle_exit: float = 1.0) -> dict:
        """Consume until stopped; with ``once``, until nothing arrived for ``idle_exit`` s."""
        loop = asyncio.get_running_loop()
        pending = None  # (future, msgs, batch) being committed
        last_msg = time.monotonic()
        backoff = 0.2
        fetch_errors = 0
        try:
            while not self._stop.is_set():
                if self.nc is None or self.nc.is_closed or self.psub is None:
                    if pending is not None:  # its acks need the old connection
                        await self._finish(pending)
                        pending = None
                    try:
                        await self.connect()
                        backoff = 0.2
                        fetch_errors = 0
                    except Exception as exc:
                        log.warning("NATS not ready (at: %s: %s); retrying in %.1fs", self._step,
                                    _describe(exc), backoff)
                        self.metrics.inc("nats_errors")
                        if once and time.monotonic() - last_msg > max(idle_exit, self.cfg.setup_timeout):
                            if isinstance(exc, (CollectorError, EmitterError)):
                                raise  # already says what to fix
                            raise self._setup_error(exc) from exc
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                try:
                    msgs = await self.psub.fetch(self.cfg.batch, timeout=self.cfg.fetch_timeout)
                    fetch_errors = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    msgs = []
                    if not _is_timeout(exc):
                        log.warning("fetch failed: %s", exc)
                        self.metrics.inc("nats_errors")
                        fetch_errors += 1
                        if fetch_errors >= 3:
                            # e.g. the durable was deleted: bind it again from scratch
                            self.psub = None
                        await self._sleep(0.2)
                if not msgs:
                    if pending is not None:
                        await self._finish(pending)
                        pending = None
                    try:
                        await loop.run_in_executor(self._writer, self.store.maybe_snapshot, True)
                    except Exception as exc:  # the next batch's commit retries the snapshot
                        if _is_fatal(exc):
                            self.fatal = self.fatal or _fatal_error(self.cfg, exc)
                            break
                        log.warning("snapshot failed: %s", exc)
                    if once and time.monotonic() - last_msg > idle_exit and await self._drained():
                        break
                    continue
                last_msg = time.monotonic()
                gc_was = gc.isenabled()
                gc.disable()  # the batch allocates millions of acyclic objects
                t0 = time.perf_counter()
                try:
                    batch, arrow = build_batch(msgs, self.cfg.instance, self.cfg.keep_raw,
                                               self.cfg.max_message_bytes)
                finally:
                    if gc_was:
                        gc.enable()
                self.metrics.add_time("decode", time.perf_counter() - t0)
                if pending is not None:
                    t0 = time.perf_counter()
                    await self._finish(pending)
                    self.metrics.add_time("wait_finish", time.perf_counter() - t0)
                fut = loop.run_in_executor(self._writer, self._write, batch, arrow)
                pending = (fut, msgs, batch)
            if pending is not None:
                await self._finish(pending)
                pending = None
            if self.fatal is not None:
                raise self.fatal
        finally:
            if pending is not None:  # cancelled mid-commit: let the commit end, ack nothing
                try:
                    await asyncio.shield(pending[0])
                except BaseException:
                    pass
        return self.metrics.snapshot()

    async def _drained(self) -> bool:
        """Nothing left for this durable: none pending and none awaiting an ack
        (messages a killed instance had fetched come back after ack_wait)."""
        try:
            info = await asyncio.wait_for(self.js.consumer_info(C.STREAM_NAME, self.cfg.durable),
                                          self.cfg.request_timeout)
        except Exception:
            return False
        return not info.num_pending and not info.num_ack_pending

    async def _sleep(self, s):
        try:
            await asyncio.wait_for(self._stop.wait(), s)
        except asyncio.TimeoutError:
            pass

    def _write(self, batch: Batch, arrow):
        parts, store_tables = arrow
        # The archive files and the DuckDB commit are written side by side:
        # the ack waits for both, and redelivery redoes both idempotently, so
        # their order does not matter for "nothing lost, nothing twice".
        t0 = time.perf_counter()
        fut = None
        if self.archive is not None:
            fut = self._archiver.submit(self.archive.write, parts, batch.first_seq, batch.last_seq)
        try:
            self.store.commit(store_tables, batch.last_seq)
        except Exception as exc:
            if fut is not None:
                try:
                    paths = fut.result()
                except Exception:
                    paths = []
                if _is_data_error(exc):
                    # the batch is about to be split and re-written message by
                    # message: files of the refused whole never were the record
                    for path in paths:
                        try:
                            os.unlink(path)
                        except OSError:
                            pass
            raise
        t1 = time.perf_counter()
        if fut is not None:
            fut.result()
        t2 = time.perf_counter()
        self.store.maybe_snapshot()
        self.metrics.add_time("commit", t1 - t0)
        self.metrics.add_time("archive_wait", t2 - t1)
        self.metrics.add_time("snapshot", time.perf_counter() - t2)
        return t2 - t0

    async def _finish(self, pending):
        fut, msgs, batch = pending
        try:
            took = await fut
        except Exception as exc:
            if _is_data_error(exc) and len(msgs) > 1:
                # The store refused some row that passed decoding: find the
                # message(s), one commit each, and dead-letter only those.
                log.warning("batch %s-%s refused by the store (%s); isolating the message",
                            batch.first_seq, batch.last_seq, exc)
                for m in msgs:
                    await self._finish(await self._isolated(m))
                return
            if _is_data_error(exc):
                batch, arrow = self._rejected(msgs[0], exc)
                try:
                    took = await asyncio.get_running_loop().run_in_executor(self._writer, self._write,
                                                                           batch, arrow)
                    exc = None
                except Exception as exc2:
                    exc = exc2
            if exc is not None:
                await self._nak_all(batch, msgs, exc)
                if _is_fatal(exc) and self.fatal is None:
                    self.fatal = _fatal_error(self.cfg, exc)
                    log.error("%s", self.fatal)
                    self.stop()
                return
        if batch.dead:
            await self._publish_dead(batch, msgs)
        for i, m in enumerate(msgs):
            try:
                await m.ack()
            except Exception as exc:
                # Committed already: the unacked rest comes back after ack_wait
                # and inserts nothing twice.  Not a reason to stop the collector.
                log.warning("ack of batch %s-%s failed after %d of %d messages (%s); they will be "
                            "redelivered", batch.first_seq, batch.last_seq, i, len(msgs), exc)
                self.metrics.inc("nats_errors")
                break
        self.metrics.batch_done(batch, took)

    async def _isolated(self, m):
        loop = asyncio.get_running_loop()
        batch, arrow = build_batch([m], self.cfg.instance, self.cfg.keep_raw, self.cfg.max_message_bytes)
        return loop.run_in_executor(self._writer, self._write, batch, arrow), [m], batch

    def _rejected(self, m, exc):
        seq, rns, _, _ = parse_reply(m.reply)
        parts = subject_parts(m.subject)
        b = Batch(self.cfg.instance, self.cfg.keep_raw)
        b.add(DeadLetter(DL_STORE_REJECTED, f"{type(exc).__name__}: {exc}"[:500]), seq, m.subject, rns,
              m.data, (m.headers or {}).get(C.HDR_MSG_ID), parts[1] if parts else None)
        b.pending = 0
        return b, b.arrow()

    async def _nak_all(self, batch, msgs, exc):
        """Nothing committed: ack nothing.  Nak so JetStream redelivers in a
        second rather than after ack_wait (disk full, store locked...)."""
        log.error("batch %s-%s not stored (%s); it will be redelivered", batch.first_seq,
                  batch.last_seq, exc)
        self.metrics.inc("store_errors")
        for m in msgs:
            try:
                await m.nak(delay=1.0)
            except Exception:
                pass

    async def _publish_dead(self, batch, msgs):
        by_seq = {}
        for m in msgs:
            by_seq[parse_reply(m.reply)[0]] = m
        for reason, subj, seq in batch.dead:
            detail = ""
            for tables in batch.parts.values():
                for row in tables.get("dead_letters", ()):
                    if row[0] == seq:
                        detail = row[3]
            m = by_seq.get(seq)
            hdrs = {C.HDR_MSG_ID: f"deadletter.{seq}", HDR_REASON: reason,
                    HDR_DETAIL: detail.replace("\r", " ").replace("\n", " ")[:400],
                    HDR_ORIG_SUBJECT: subj, HDR_ORIG_SEQ: str(seq)}
            try:
                await self.js.publish(C.deadletter_subject(reason), m.data if m else b"", headers=hdrs,
                                      timeout=self.cfg.request_timeout)
            except Exception as exc:
                # Stored in dead_letters already; the DLQ stream copy is best effort
                # (e.g. the payload is over the server's limit).
                log.warning("dead letter %s (%s) not published to %s: %s", seq, reason,
                            C.deadletter_subject(reason), exc)
                self.metrics.inc("deadletter_publish_errors")

    def close(self):
        self._writer.shutdown(wait=True)
        self._archiver.shutdown(wait=True)
        if self.archive is not None:
            self.archive.close()
        self.store.close()


def run_collector(cfg: CollectorConfig, once: bool = False, metrics: Metrics | None = None,
                  metrics_addr: str | None = None, install_signals: bool = True) -> dict:
    """Blocking entry point used by the CLI: SIGTERM/SIGINT finish the batch, ack, close."""
    import signal

    col = Collector(cfg, metrics)
    http = None
    if metrics_addr:
        from collector.metrics import serve_metrics
        http = serve_metrics(col.metrics, metrics_addr)

    async def main():
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, col.stop)
        try:
            return await col.run(once=once)
        finally:
            await col.close_nats()

    try:
        return asyncio.run(main())
    finally:
        col.close()
        if http is not None:
            http.shutdown()
        sys.stderr.flush()

