"""The collector loop: durable JetStream pull consumer -> archive -> DuckDB -> ack.

Per batch (up to ``batch`` messages and 16 MiB from one pull request,
``collector.pull``: one request outstanding at a time):

1. decode every message (pure, ``collector.decode``) into one columnar batch;
   bad input becomes a dead letter, never an exception;
2. write the batch's Parquet files (fsync) and commit the rows and the
   stream sequence to DuckDB in one transaction (in writer threads, so the
   next batch is fetched and decoded meanwhile: DuckDB and Parquet release the
   GIL);
3. once that commit is over: hand the next batch to the writer, publish each
   dead letter to ``contract.deadletter_subject(reason)`` (collector.outcomes)
   and ack every message of the batch, even while a fetch is outstanding.

Nothing is acked before it is committed, so a crash anywhere means
redelivery, and redelivery inserts nothing twice (``collector.dedup`` on
``schema.KEYS``).  Several collectors may share the durable consumer (a work
queue): each needs its own DuckDB file and instance name; the Parquet
archive may be shared (file names carry the instance name).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from collector import gcpolicy, outcomes
from collector.archive import Archive, file_name
from collector.autocompact import AutoCompactor
from collector.columns import Batch
from collector.config import CollectorConfig
from collector.consumer_errors import _describe, _fatal_error, _is_data_error, _is_fatal, _is_timeout
from collector.errors import CollectorError
from collector.fetched import build_batch, parse_reply, rejected_batch  # noqa: F401  (parse_reply: re-exported)
from collector.metrics import Metrics
from collector.pull import Puller
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

class ConsumerError(CollectorError):
    """The JetStream consumer could not be set up."""


class _LoopState:
    """What ``Collector.run`` carries from one fetch to the next."""

    def __init__(self):
        self.pending = None  # (future, msgs, batch) being committed
        self.last_msg = time.monotonic()
        self.backoff = 0.2
        self.fetch_errors = 0


class Collector:
    """One collector instance.  ``run()`` until ``stop()`` (or idle, with ``once``)."""

    def __init__(self, cfg: CollectorConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.store = Store(cfg.db, consumer=cfg.instance, snapshot_interval=cfg.snapshot_interval,
                           memory_limit=cfg.memory_limit)
        self.archive = Archive(cfg.archive, consumer=cfg.instance, fsync=cfg.fsync) if cfg.archive else None
        #: the archive's own compactor (collector/autocompact.py): a background thread
        self.compactor = AutoCompactor.for_collector(cfg, self.metrics)
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
        # our own pull (collector/pull.py): one byte-limited request at a time,
        # where nats-py's fetch left several open and got us cut as a slow consumer
        self.psub = await Puller(self.nc, C.STREAM_NAME, self.cfg.durable, self.cfg.batch).start()

    async def close_nats(self):
        from emitter.natsio import close
        nc, psub, self.nc, self.js, self.psub = self.nc, self.psub, None, None, None
        if psub is not None and nc is not None and not nc.is_closed:
            await psub.close()  # naks what it received but never handed over
        await close(nc)

    # ------------------------------------------------------------ loop
    async def run(self, once: bool = False, idle_exit: float = 1.0) -> dict:
        """Consume until stopped; with ``once``, until nothing arrived for ``idle_exit`` s.

        Two batches in flight: while the writer thread archives and commits
        one, this loop fetches and decodes the next; a batch is acked after
        its commit (``_finish``), never before."""
        loop = asyncio.get_running_loop()
        st = _LoopState()
        gcpolicy.hold()
        try:
            while not self._stop.is_set():
                if self.nc is None or self.nc.is_closed or self.psub is None:
                    if not await self._reconnect(st, once, idle_exit):
                        continue
                t0 = time.perf_counter()
                msgs = await self._fetch_settling(st)
                if msgs:
                    self.metrics.add_time("fetch", time.perf_counter() - t0)
                if not msgs:
                    if await self._idle(st, once, idle_exit):
                        break
                    continue
                st.last_msg = time.monotonic()
                t0 = time.perf_counter()
                batch, arrow = build_batch(msgs, self.cfg.instance, self.cfg.keep_raw,
                                           self.cfg.max_message_bytes)
                self.metrics.add_time("decode", time.perf_counter() - t0)
                await self._settle(st, functools.partial(self._submit, loop, msgs, batch, arrow))
                gcpolicy.maybe_collect()
            await self._settle(st)
            if self.fatal is not None:
                raise self.fatal
        finally:
            gcpolicy.release()
            if st.pending is not None:  # cancelled mid-commit: let the commit end, ack nothing
                try:
                    await asyncio.shield(st.pending[0])
                except BaseException:
                    pass
        return self.metrics.snapshot()

    def _submit(self, loop, msgs, batch, arrow):
        return loop.run_in_executor(self._writer, self._write, batch, arrow), msgs, batch

    async def _settle(self, st, then=None):
        """Wait for the batch in flight to commit, then ack it.  ``then()``
        submits the next batch: as soon as the one in flight has committed,
        before its acks, so that the writer is not idle while they are sent
        (docs/collector.md "The loop")."""
        pending, st.pending = st.pending, None
        if pending is None:
            if then is not None:
                st.pending = then()
            return
        t0 = time.perf_counter()
        try:
            await self._finish(pending, st, then)
        except BaseException:
            # cancelled mid-commit: run()'s finally lets that commit end, acking nothing
            if st.pending is None:
                st.pending = pending
            raise
        self.metrics.add_time("wait_finish", time.perf_counter() - t0)

    async def _fetch_settling(self, st) -> list:
        """``_fetch``, acking the batch in flight as soon as its commit is
        over rather than after the fetch: a fetch that finds nothing waits
        ``fetch_timeout``, and the last batch of a burst would wait with it."""
        if st.pending is None:
            return await self._fetch(st)
        fetch = asyncio.ensure_future(self._fetch(st))
        try:
            await asyncio.wait((fetch, st.pending[0]), return_when=asyncio.FIRST_COMPLETED)
            if st.pending[0].done():
                await self._settle(st)
            return await fetch
        finally:
            if not fetch.done():  # cancelled: unacked messages it got come back after ack_wait
                fetch.cancel()

    async def _reconnect(self, st, once, idle_exit) -> bool:
        """(Re)connect and bind the consumer; False after a failure (backed off)."""
        await self._settle(st)  # its acks need the old connection
        try:
            await self.connect()
            st.backoff, st.fetch_errors = 0.2, 0
            return True
        except Exception as exc:
            log.warning("NATS not ready (at: %s: %s); retrying in %.1fs", self._step, _describe(exc), st.backoff)
            self.metrics.inc("nats_errors")
            if once and time.monotonic() - st.last_msg > max(idle_exit, self.cfg.setup_timeout):
                if isinstance(exc, (CollectorError, EmitterError)):
                    raise  # already says what to fix
                raise self._setup_error(exc) from exc
            await self._sleep(st.backoff)
            st.backoff = min(st.backoff * 2, 5.0)
            return False

    async def _fetch(self, st) -> list:
        """Up to ``batch`` messages; [] on a timeout or an error (counted)."""
        try:
            msgs = await self.psub.fetch(self.cfg.fetch_timeout)
            st.fetch_errors = 0
            return msgs
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not _is_timeout(exc):
                log.warning("fetch failed: %s", exc)
                self.metrics.inc("nats_errors")
                st.fetch_errors += 1
                if st.fetch_errors >= 3:
                    # e.g. the durable was deleted: bind it again from scratch
                    self.psub = None
                await self._sleep(0.2)
            return []

    async def _idle(self, st, once, idle_exit) -> bool:
        """Nothing fetched: ack what is in flight, publish the snapshot; True to stop."""
        await self._settle(st)
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.maybe_snapshot, True)
        except Exception as exc:  # the next batch's commit retries the snapshot
            if _is_fatal(exc):
                self.fatal = self.fatal or _fatal_error(self.cfg, exc)
                return True
            log.warning("snapshot failed: %s", exc)
        gcpolicy.maybe_collect(idle=True)
        return once and time.monotonic() - st.last_msg > idle_exit and await self._drained()

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
        if self.compactor is None:
            return self._write_batch(batch, arrow)
        # the compactor leaves this batch's files alone until its commit succeeded
        with self.compactor.holding(file_name(self.archive.consumer, batch.first_seq, batch.last_seq)):
            return self._write_batch(batch, arrow)

    def _write_batch(self, batch: Batch, arrow):
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
        try:
            self.store.maybe_snapshot()
        except StoreError as exc:
            # The batch is committed: failing it would nak and redeliver work
            # that is already stored.  The next commit (or idle) retries.
            if _is_fatal(exc):
                raise
            log.warning("snapshot failed: %s", exc)
        self.metrics.add_time("commit", t1 - t0)
        self.metrics.add_time("archive_wait", t2 - t1)
        self.metrics.add_time("snapshot", time.perf_counter() - t2)
        return t2 - t0

    async def _finish(self, pending, st=None, then=None):
        """Ack a batch once its commit succeeded (or isolate, dead-letter or
        nak it); ``then()``, when given, submits the next batch into
        ``st.pending`` once this one's commit is over."""
        fut, msgs, batch = pending
        try:
            took = await fut
        except Exception as exc:
            await self._failed(exc, msgs, batch)
            if then is not None:
                st.pending = then()
            return
        if then is not None:
            st.pending = then()
        await self._ack(batch, msgs, took)

    async def _ack(self, batch, msgs, took):
        """The batch is committed: its dead letters out, then its acks."""
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

    async def _failed(self, exc, msgs, batch):
        """The commit of a batch failed: isolate the message the store
        refused (and dead-letter it), or nak the batch."""
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
                took = await asyncio.get_running_loop().run_in_executor(self._writer, self._write, batch, arrow)
            except Exception as exc2:
                exc = exc2
            else:
                await self._ack(batch, msgs, took)
                return
        await self._nak_all(batch, msgs, exc)
        if _is_fatal(exc) and self.fatal is None:
            self.fatal = _fatal_error(self.cfg, exc)
            log.error("%s", self.fatal)
            self.stop()

    async def _isolated(self, m):
        loop = asyncio.get_running_loop()
        batch, arrow = build_batch([m], self.cfg.instance, self.cfg.keep_raw, self.cfg.max_message_bytes)
        return loop.run_in_executor(self._writer, self._write, batch, arrow), [m], batch

    def _rejected(self, m, exc):
        return rejected_batch(m, exc, self.cfg.instance, self.cfg.keep_raw)

    async def _nak_all(self, batch, msgs, exc):
        await outcomes.nak_all(batch, msgs, exc, self.metrics)

    async def _publish_dead(self, batch, msgs):
        await outcomes.publish_dead(self.js, batch, msgs, self.cfg.request_timeout, self.metrics)

    def close(self):
        self._writer.shutdown(wait=True)
        self._archiver.shutdown(wait=True)
        if self.compactor is not None:
            self.compactor.close()
        if self.archive is not None:
            self.archive.close()
        self.store.close()


def run_collector(cfg: CollectorConfig, once: bool = False, metrics: Metrics | None = None,
                  metrics_addr: str | None = None, install_signals: bool = True) -> dict:
    """Blocking entry point used by the CLI: SIGTERM/SIGINT finish the batch, ack, close."""
    import signal

    from collector.decode_spans import decoder_in_use
    which, why = decoder_in_use()
    (log.info if why is None else log.warning)("span decoder: %s%s", which, "" if why is None else f" ({why})")
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

