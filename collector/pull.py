"""JetStream pull with one byte-limited request outstanding at a time.

nats-py 2.16's ``PullSubscription.fetch`` has no ``max_bytes`` and, when a
fetch returns before its batch is complete, leaves that request open on the
server while the next fetch sends another.  With 2,048 messages of ~13 KB per
request, several requests (27 MB each) were outstanding while the event loop
decoded a batch and read nothing from the socket; nats-server's outbound
buffer for the connection passed its per-client ``max_pending`` (64 MiB by
default), the server dropped the connection as a slow consumer, and what it
had sent came back only after ``ack_wait`` (60 s): the 4,096-node burst took
64-68 s instead of a few (docs/collector.md, "The loop").

Here each request to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` carries
``batch``, ``max_bytes`` (:data:`PULL_MAX_BYTES`) and ``expires``, and the next
request is sent only when the current one is over: its batch is complete, or
the server ended it with a status (404 no messages, 408 expired, 409 max
bytes / consumer deleted / leadership change: the statuses nats-py's fetch
treats as the end of a request, not as errors), or its expiry passed on our
clock (a request lost in a reconnect).  The next request is sent *before* the
finished batch is handed over, so its messages flow while the caller decodes,
and the server never holds more than one request's bytes for us.

Each request gets its own reply subject (``<inbox>.<n>``) so that a status
meant for an earlier request never ends the current one.  Data messages carry
the stream subject, not the reply subject: a late one from an earlier request
is simply part of the next batch (acked after its commit like any other).

A partial batch is returned without waiting for the request to end when the
stream has nothing more for this consumer (``num_pending`` 0 in the last
message's ack subject): a trickle is stored as it arrives, while the request
stays open for what comes next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from collector.fetched import parse_reply

log = logging.getLogger("hookscope.collector")

#: Bytes one pull request may bring.  nats-server cuts a client whose
#: outbound buffer passes ``max_pending`` (64 MiB by default, not visible to
#: clients); 16 MiB keeps even two requests' worth (one our clock gave up on,
#: one new) plus API replies under half of it, and still carries ~1,250 burst
#: messages of 13 KB, enough to amortize a DuckDB commit and a Parquet file.
PULL_MAX_BYTES = 16 * 1024 * 1024
#: Server-side life of a request (it stays open across ``fetch`` calls while
#: the stream is idle); after it plus ``EXPIRY_GRACE_S`` on our clock without
#: an end status, the request is taken as lost and a new one is sent.
REQUEST_EXPIRES_S = 5.0
EXPIRY_GRACE_S = 1.0

_STATUS = "Status"
_DESCRIPTION = "Description"
_HEARTBEAT = "100"
#: no messages (no_wait), request timeout, conflict (max bytes, consumer
#: deleted, leadership change, exceeded max waiting...): as in nats-py's
#: ``JetStreamContext._is_temporary_error``, the end of the request
_END = frozenset(("404", "408", "409"))
_MAX_BYTES_DESC = "message size exceeds maxbytes"


class PullError(Exception):
    """The server answered a pull request with an error status (e.g. 503: no
    consumer answers, 400: a bad request)."""

    def __init__(self, code: str, description: str, subject: str):
        self.code, self.description = code, description
        super().__init__(f"pull request to {subject} answered {code} {description}".rstrip())


class Puller:
    """Pull from a durable consumer: ``await start()``, ``await fetch(t)``
    repeatedly, ``await close()``.  One instance per connection."""

    def __init__(self, nc, stream: str, durable: str, batch: int, max_bytes: int = PULL_MAX_BYTES,
                 expires: float = REQUEST_EXPIRES_S, api_prefix: str = "$JS.API"):
        self.nc = nc
        self.batch = batch
        self.max_bytes = max_bytes
        self.expires = expires
        self.subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub = None
        self._buf: list = []
        self._event = asyncio.Event()
        self._n = 0  # id of the current request, the last token of its reply subject
        self._req: str | None = None  # current request's id, None when none is open
        self._asked = 0  # messages the current request asked for
        self._want = 0  # ... and may still bring
        self._deadline = 0.0
        self._ended = False
        self._one_unlimited = False  # next request: one message, no byte limit
        self._error: PullError | None = None
        self._reconnects = 0
        #: requests sent, and statuses seen by code (for tests and the docs)
        self.requests = 0
        self.statuses: dict[str, int] = {}

    async def start(self):
        self._reconnects = self.nc.stats.get("reconnects", 0)
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        return self

    async def _on_msg(self, msg):
        hdrs = msg.headers
        status = hdrs.get(_STATUS) if hdrs and not msg.data else None
        if status is None:
            self._buf.append(msg)
            self._want -= 1
            if self._want <= 0:
                self._ended = True  # complete: the server sends no status for that
            self._event.set()
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == _HEARTBEAT or msg.subject.rsplit(".", 1)[-1] != self._req:
            return  # a heartbeat, or the end of a request already given up on
        desc = hdrs.get(_DESCRIPTION, "")
        if status in _END:
            if status == "409" and desc.lower() == _MAX_BYTES_DESC and self._want == self._asked:
                # the next message alone is larger than max_bytes: fetch it by itself
                self._one_unlimited = True
            elif status == "409":
                log.info("pull request on %s ended: %s %s", self.subject, status, desc)
        else:
            self._error = PullError(status, desc, self.subject)
        self._ended = True
        self._event.set()

    async def _request(self):
        self._n += 1
        self._req = str(self._n)
        if self._one_unlimited:
            req = {"batch": 1}
            self._one_unlimited = False
        else:
            req = {"batch": self.batch, "max_bytes": self.max_bytes}
        req["expires"] = int(self.expires * 1e9)
        self._asked = self._want = req["batch"]
        self._ended = False
        self._deadline = time.monotonic() + self.expires + EXPIRY_GRACE_S
        self.requests += 1
        await self.nc.publish(self.subject, json.dumps(req).encode(), reply=f"{self._inbox}.{self._req}")

    def _caught_up(self) -> bool:
        try:
            return parse_reply(self._buf[-1].reply)[2] == 0
        except (ValueError, TypeError, IndexError):
            return True

    def _take(self) -> list:
        out, self._buf = self._buf, []
        return out

    async def fetch(self, timeout: float) -> list:
        """The messages received so far once the request is over or the
        consumer has nothing more pending; [] after ``timeout`` s of nothing.
        Raises :class:`PullError` on an error status."""
        if self._sub is None:
            raise RuntimeError("Puller.fetch before start()")
        end = time.monotonic() + timeout
        while True:
            reconnects = self.nc.stats.get("reconnects", 0)
            if reconnects != self._reconnects:  # a new server connection knows no request of ours
                self._reconnects, self._req = reconnects, None
            if self._req is not None and (self._ended or time.monotonic() > self._deadline):
                self._req = None
            if self._error is not None:
                if self._buf:  # hand over what arrived first: raised on the next call
                    return self._take()
                err, self._error = self._error, None
                raise err
            if self._req is None:
                await self._request()  # sent before the batch is handed over: it flows meanwhile
                if self._buf:
                    return self._take()
            elif self._buf and self._caught_up():
                return self._take()
            now = time.monotonic()
            if now >= end:
                return self._take()
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), min(end, self._deadline) - now + 0.001)
            except asyncio.TimeoutError:
                pass

    async def close(self, nak: bool = True):
        """Stop receiving (the server drops a request nobody listens to) and
        nak what was received but never handed over, so that it is
        redelivered now (to another collector on the durable) rather than
        after ack_wait."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await asyncio.wait_for(sub.drain(), 2.0)
        except Exception:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if nak:
            for m in self._take():
                try:
                    await m.nak()
                except Exception:
                    break
