"""Publishing to JetStream: a synchronous publisher, the agent's trace exporter, the SDK's.

``JetStreamPublisher`` owns one NATS connection on a private asyncio loop in a
daemon thread, so callers (the agent loop, the SDK's span processors) stay
synchronous.  Every call has a deadline; a dead server costs at most that
deadline, never a hang (nats-py would otherwise wait on reconnects forever).

``TraceExporter`` publishes the OTLP requests the agent builds from journal
files, as built (no second encoding), with a stable ``Nats-Msg-Id``; it
reports success only after the JetStream PubAcks, so the agent deletes a
journal file only once the stream has it.  ``NatsSpanExporter`` is the
OpenTelemetry ``SpanExporter`` for SDK users: the SDK's own encoder, then the
same publishing.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from emitter import EmitterError
from emitter import contract as c
from emitter import natsio, otlp


class PublishError(EmitterError):
    """A publish got no PubAck within its deadline, or NATS refused it."""


class MessageTooLarge(PublishError):
    """One message is over the exporter's ``max_bytes``: nothing was sent."""


class JetStreamPublisher:
    """Synchronous JetStream publishing with deadlines.

    ``publish()`` connects on demand (within ``opts.connect_timeout``), sends
    with headers and waits for the PubAck (``opts.request_timeout``).  After a
    failure the connection is dropped and the next call reconnects, so an
    outage ends as soon as the server is back.  ``ensure_streams`` runs once
    per connection when ``create_streams`` is set.
    """

    def __init__(self, opts: natsio.NatsOptions, *, create_streams: bool = True, replicas: int = 1,
                 log=None):
        self.opts = opts
        self.create_streams = create_streams
        self.replicas = replicas
        self._log = log or (lambda msg: None)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hookscope-nats",
                                        daemon=True)
        self._thread.start()
        self._nc = None
        self._js = None
        self._lock = threading.Lock()
        self._closed = False
        self._streams_tried = False
        self.published = 0
        self.duplicates = 0

    # All coroutines run on the private loop; _call bounds the wait from the
    # caller's side too, so even a wedged loop cannot block the caller.
    def _call(self, coro, timeout: float):
        if self._closed:
            coro.close()
            raise PublishError("publisher is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise PublishError(f"no answer from NATS within {timeout:.1f}s") from None

    async def _ensure(self):
        if self._nc is not None and self._nc.is_connected:
            return self._js
        if self._nc is not None and not self._nc.is_closed:
            # Reconnecting: wait for it, bounded by the caller's deadline.
            return self._js
        self._nc = await natsio.connect(self.opts)
        self._js = self._nc.jetstream(timeout=self.opts.request_timeout)
        if self.create_streams and not self._streams_tried:
            # Best effort, once: with the per-node permissions of docs/security.md
            # only the collector may create or change streams; publishing must
            # not depend on it.  A missing stream shows as publish failures.
            self._streams_tried = True
            try:
                await natsio.ensure_streams(self._js, self.replicas, self.opts.request_timeout, dlq=False)
            except Exception as exc:  # noqa: BLE001
                self._log(f"stream set-up skipped ({type(exc).__name__}: {exc}); publishing "
                          "anyway (the collector creates the streams)")
        return self._js

    async def _drop(self):
        nc, self._nc, self._js = self._nc, None, None
        await natsio.close(nc, 1.0)

    async def _publish(self, subject, data, headers, timeout):
        try:
            js = await self._ensure()
            ack = await asyncio.wait_for(js.publish(subject, data, timeout=timeout, headers=headers),
                                         timeout + 0.5)
            return ack
        except natsio.NatsUnavailable:
            raise
        except (asyncio.TimeoutError, Exception) as exc:
            name = type(exc).__name__
            if "MaxPayload" in name:
                raise PublishError(f"message of {len(data)} bytes exceeds the server's max_payload "
                                   f"on {subject}") from None
            if self._nc is None or not self._nc.is_connected:
                await self._drop()
            raise PublishError(f"publish to {subject} failed: {name}: {exc}") from None

    async def _publish_many(self, items, timeout):
        """Send every message before waiting (pipelined, in order on one
        connection), then collect the PubAcks; raises on the first failure."""
        js = await self._ensure()
        tasks = [asyncio.ensure_future(js.publish(subj, data, timeout=timeout, headers=hdrs))
                 for subj, data, hdrs in items]
        try:
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout + 0.5)
        except asyncio.TimeoutError:
            for t in tasks:
                t.cancel()
            results = [asyncio.TimeoutError()]
        for r, (subj, data, _) in zip(results, items):
            if isinstance(r, BaseException):
                name = type(r).__name__
                if self._nc is None or not self._nc.is_connected:
                    await self._drop()
                if "MaxPayload" in name:
                    raise PublishError(f"message of {len(data)} bytes exceeds the server's max_payload "
                                       f"on {subj}")
                raise PublishError(f"publish to {subj} failed: {name}: {r}")
        return results

    def publish_many(self, items, timeout: float | None = None) -> list:
        """[(subject, data, msg_id, content_type)] -> PubAcks, all or PublishError."""
        timeout = timeout or self.opts.request_timeout
        prepared = [(subj, data, natsio.headers_for(mid, ct)) for subj, data, mid, ct in items]
        outer = timeout + self.opts.connect_timeout * (len(self.opts.servers) + 1) \
            + self.opts.request_timeout * 2 + 1.0
        with self._lock:
            acks = self._call(self._publish_many(prepared, timeout), outer)
        self.published += len(acks)
        self.duplicates += sum(1 for a in acks if getattr(a, "duplicate", False))
        return acks

    def connect(self, timeout: float | None = None) -> None:
        """Connect (and set up streams) now; raises NatsUnavailable/PublishError."""
        t = timeout or self.opts.connect_timeout * (len(self.opts.servers) + 1) + self.opts.request_timeout * 2
        with self._lock:
            self._call(self._ensure(), t)

    def publish(self, subject: str, data: bytes, msg_id: str, content_type: str,
                timeout: float | None = None):
        """Publish and wait for the PubAck; returns it or raises (EmitterError)."""
        timeout = timeout or self.opts.request_timeout
        headers = natsio.headers_for(msg_id, content_type)
        outer = timeout + self.opts.connect_timeout * (len(self.opts.servers) + 1) \
            + self.opts.request_timeout * 2 + 1.0
        with self._lock:
            ack = self._call(self._publish(subject, data, headers, timeout), outer)
        self.published += 1
        if getattr(ack, "duplicate", False):
            self.duplicates += 1
        return ack

    @property
    def connected(self) -> bool:
        nc = self._nc
        return bool(nc is not None and nc.is_connected)

    def close(self, timeout: float = 3.0) -> None:
        if self._closed:
            return
        try:
            self._call(self._drop(), timeout)
        except Exception:
            pass
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


class TraceExporter:
    """Publishes OTLP trace requests as built: one message per hook.

    Each request is split as :func:`emitter.otlp.split_requests` does (a hook
    span with its script spans, or one standalone span), published on
    ``hookscope.spans.<cluster>.<node>`` (from the request's resource) with
    ``Nats-Msg-Id`` from the records it carries, so a retry after a crash is
    dropped by the stream's duplicate window.  The messages of one call are
    pipelined; ``export()`` is True only when every one was acked.  It never
    raises: ``last_error`` says why the last call failed ("... over the
    N-byte limit" or "... max_payload ..." for a message too large to ship,
    which the agent reports instead of retrying).  The agent ships the
    requests it builds from journal files through this, and
    :class:`NatsSpanExporter` the SDK's spans once encoded.
    """

    def __init__(self, publisher: JetStreamPublisher, *, timeout: float = 5.0,
                 max_bytes: int = c.MAX_MESSAGE_BYTES):
        self.publisher = publisher
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.last_error: str | None = None
        self.last_ack = None
        self.last_acks: list = []

    def messages(self, requests) -> list:
        """[(subject, data, msg_id, content_type)] of the requests; MessageTooLarge
        when one message is over ``max_bytes``."""
        items = []
        for req in requests:
            for key, part in otlp.split_requests(req):
                data = part.SerializeToString()
                if len(data) > self.max_bytes:
                    raise MessageTooLarge(f"message {key} is {len(data)} bytes, over the "
                                          f"{self.max_bytes}-byte limit")
                cluster, node = otlp.resource_of(part)
                items.append((c.subject(c.SIGNAL_SPANS, cluster, node), data,
                              c.message_id(cluster, node, c.SIGNAL_SPANS, key), c.CONTENT_TYPE_TRACES))
        return items

    def export(self, requests) -> bool:
        try:
            self.last_acks, self.last_ack = [], None
            items = self.messages(requests)
            if items:
                self.last_acks = self.publisher.publish_many(items, self.timeout)
                self.last_ack = self.last_acks[-1]
            self.last_error = None
            return True
        except Exception as exc:  # noqa: BLE001 - callers count failures, never crash on them
            self.last_error = str(exc) if isinstance(exc, MessageTooLarge) else f"{type(exc).__name__}: {exc}"
            return False


class NatsSpanExporter(SpanExporter):
    """OpenTelemetry SpanExporter publishing OTLP protobuf to JetStream.

    The spans of one ``export()`` call are encoded by the SDK's own OTLP
    encoder (``opentelemetry-exporter-otlp-proto-common``, the one the SDK's
    gRPC and HTTP exporters use) and published by :class:`TraceExporter`:
    one message per hook or standalone span, on
    ``hookscope.spans.<cluster>.<node>`` (from the spans' resource), with a
    stable ``Nats-Msg-Id``.  SUCCESS only after every JetStream PubAck.
    Never raises; every call is bounded by ``timeout`` seconds;
    ``last_error`` says why the last export failed.
    """

    def __init__(self, publisher: JetStreamPublisher | None = None, *,
                 options: natsio.NatsOptions | None = None, timeout: float = 5.0,
                 max_bytes: int = c.MAX_MESSAGE_BYTES):
        self._own = publisher is None
        if publisher is None:
            publisher = JetStreamPublisher(options or natsio.NatsOptions())
        self.publisher = publisher
        self.traces = TraceExporter(publisher, timeout=timeout, max_bytes=max_bytes)
        self._shutdown = False

    @property
    def last_error(self) -> str | None:
        return self.traces.last_error

    @property
    def last_acks(self) -> list:
        return self.traces.last_acks

    @property
    def last_ack(self):
        return self.traces.last_ack

    def export(self, spans: Sequence) -> SpanExportResult:
        if self._shutdown:
            self.traces.last_error = "exporter is shut down"
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            req = encode_spans(spans)
        except Exception as exc:  # the SDK contract: never raise into the caller
            self.traces.last_error = f"{type(exc).__name__}: {exc}"
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self.traces.export([req]) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True
        if self._own:
            try:
                self.publisher.close()
            except Exception:
                pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # export() is synchronous and returns only after the PubAck (or its
        # failure): nothing is ever buffered here, so there is nothing to flush.
        return not self._shutdown


def log_stderr(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} hookscope-agent: {msg}\n")
    sys.stderr.flush()
