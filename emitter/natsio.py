"""NATS connection and JetStream stream set-up with explicit, finite options.

nats-py's defaults are wrong for us: ``max_reconnect_attempts=0`` means retry
forever, and a publish while disconnected can wait on a reconnect that never
comes.  Every option here is finite and every call is wrapped in a deadline;
the agent's own loop decides when to try again.

``ensure_streams(js, replicas)`` is shared with the collector: create the
streams from ``contract.STREAM_SETTINGS`` or verify (and update what can be
updated of) existing ones.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from emitter import EmitterError
from emitter import contract as c
from emitter.natsauth import NatsAuth, NatsConfigError  # noqa: F401 - NatsConfigError re-exported


class NatsUnavailable(EmitterError):
    """NATS could not be reached or did not answer within the deadline."""


class StreamMismatch(EmitterError):
    """An existing stream has settings that cannot be updated in place."""


class StreamNoRoom(EmitterError):
    """The server's JetStream storage limit cannot hold the stream's ``max_bytes``."""


#: JetStream's error code for "insufficient storage resources available": the
#: stream's max_bytes does not fit what is left of the server's (or the
#: account's) file-store limit.
_ERR_NO_STORAGE = 10047


def _no_room(name: str, want) -> StreamNoRoom:
    gib = int(want.max_bytes) / 1024**3
    return StreamNoRoom(
        f"stream {name}: the server refused to reserve its max_bytes ({gib:g} GiB per replica, "
        "docs/contract.md) because its JetStream file-store limit has no room left; set "
        "jetstream { max_file_store: 64G } (or more) in the nats-server config, as "
        "deploy/nats/nats-server.conf does (without it the limit is 75 % of the disk that was "
        "free when the server started), give the account more storage, or free disk space")


@dataclass(frozen=True)
class NatsOptions:
    """Everything needed to connect; validated at construction."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    creds: str | None = None  # .creds file (JWT + nkey seed)
    nkey_seed: str | None = None  # file holding an nkey seed
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 0.5
    max_reconnect_attempts: int = 3
    ping_interval: float = 20.0
    request_timeout: float = 5.0  # JetStream API calls and PubAcks
    name: str = "hookscope-agent"
    #: reply-inbox prefix; the agent uses contract.inbox_prefix(node) so the
    #: server can allow a node to read only its own PubAcks (docs/security.md)
    inbox_prefix: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        servers = self.servers
        if isinstance(servers, str):
            servers = tuple(s.strip() for s in servers.split(",") if s.strip())
            object.__setattr__(self, "servers", servers)
        if not servers:
            raise NatsConfigError("no NATS server URL given: pass --nats nats://host:4222 "
                                  "or set HOOKSCOPE_NATS_URL")
        for url in servers:
            if "://" not in url:
                raise NatsConfigError(f"NATS URL {url!r} has no scheme: write nats://{url} "
                                      "(or tls://... for TLS)")
        # The file checks (exists, readable, cert with key) are NatsAuth's, for every component;
        # the root-ownership check is the caller's (NatsAuth.check), as it depends on who runs.
        self.auth.check(trust=False)
        if self.max_reconnect_attempts <= 0:
            # 0 or negative mean "forever" in nats-py: exactly what we must not do.
            raise NatsConfigError("max_reconnect_attempts must be >= 1 (nats-py treats "
                                  f"{self.max_reconnect_attempts} as retry forever)")
        for name in ("connect_timeout", "reconnect_time_wait", "request_timeout"):
            if getattr(self, name) <= 0:
                raise NatsConfigError(f"{name} must be > 0 seconds")

    @property
    def auth(self) -> NatsAuth:
        """The credential fields as the one :class:`emitter.natsauth.NatsAuth`."""
        return NatsAuth(creds=self.creds, nkey=self.nkey_seed, user=self.user, password=self.password,
                        token=self.token, tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key)

    @classmethod
    def from_auth(cls, auth: NatsAuth, **kw) -> "NatsOptions":
        """Options logging in as ``auth`` (the rest from ``kw``)."""
        return cls(creds=auth.creds, nkey_seed=auth.nkey, user=auth.user, password=auth.password,
                   token=auth.token, tls_ca=auth.tls_ca, tls_cert=auth.tls_cert, tls_key=auth.tls_key, **kw)

    def tls_context(self) -> ssl.SSLContext | None:
        return self.auth.tls_context(self.servers)

    def connect_kwargs(self) -> dict:
        kw = dict(
            servers=list(self.servers),
            name=self.name,
            connect_timeout=self.connect_timeout,
            reconnect_time_wait=self.reconnect_time_wait,
            max_reconnect_attempts=self.max_reconnect_attempts,
            allow_reconnect=True,
            ping_interval=self.ping_interval,
            max_outstanding_pings=2,
        )
        if self.inbox_prefix:
            kw["inbox_prefix"] = self.inbox_prefix
        kw.update(self.auth.connect_kwargs(self.servers))
        kw.update(self.extra)
        return kw


async def _quiet(*_a, **_k):
    """nats-py logs every reconnect failure through error_cb; the agent reports
    outages itself, once, instead of a line per attempt."""


_AUTH_HINT = (" (the server refused the login: check --creds / --nkey / --user and "
              "HOOKSCOPE_NATS_PASSWORD, or the [agent] section of the config)")


async def connect(opts: NatsOptions, *, error_cb=None, disconnected_cb=None, reconnected_cb=None,
                  closed_cb=None):
    """Connected ``nats.aio.client.Client`` or :class:`NatsUnavailable`, within
    ``connect_timeout * (len(servers) + 1)`` seconds in total."""
    import nats

    # nats-py reports the real cause of a refused connect ("Authorization
    # Violation", TLS failures) only to error_cb, then raises a bare "no servers
    # available"; remember what it saw so the message says what to fix.
    seen: list[BaseException] = []

    async def _record(exc=None, *a, **k):
        if isinstance(exc, BaseException) and len(seen) < 32:
            seen.append(exc)
        if error_cb is not None:
            await error_cb(exc, *a, **k)

    kw = opts.connect_kwargs()
    kw["error_cb"] = _record
    kw["disconnected_cb"] = disconnected_cb or _quiet
    kw["reconnected_cb"] = reconnected_cb or _quiet
    kw["closed_cb"] = closed_cb or _quiet
    where = ", ".join(opts.servers)
    # Initial connect also honours max_reconnect_attempts; bound it overall.
    total = opts.connect_timeout * (len(opts.servers) + 1) + 0.5
    try:
        return await asyncio.wait_for(nats.connect(**kw), total)
    except (asyncio.TimeoutError, OSError) as exc:
        msg = f"{type(exc).__name__}: {exc or 'timed out'}"
        cause = _telling(seen)
        if cause and cause not in msg:
            msg += f"; last error: {cause}"
        raise NatsUnavailable(f"NATS at {where} unreachable: {_hint(msg)}") from None
    except Exception as exc:  # nats-py raises plain Errors for auth, TLS, no servers
        msg = _describe(exc)
        cause = _telling(seen)
        if cause and cause not in msg:
            msg = f"{cause} ({msg})" if msg else cause
        raise NatsUnavailable(f"could not connect to {where}: {_hint(msg)}") from None


def _telling(seen: list[BaseException]) -> str:
    """The error that says what to fix: a refusal by the server (authorization,
    TLS) beats the broken pipes and resets that follow it on retries."""
    texts = [_describe(e) for e in seen]
    for t in reversed(texts):
        low = t.lower()
        if "uthoriz" in t or "certificate" in low or "ssl" in low or "tls" in low:
            return t
    return texts[-1] if texts else ""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if text.startswith("nats: "):  # nats-py wraps server -ERR text as "nats: 'Authorization Violation'"
        text = text[len("nats: "):]
    return text.strip("'\" ") or type(exc).__name__


def _hint(msg: str) -> str:
    low = msg.lower()
    if "uthoriz" in msg:
        return msg + _AUTH_HINT
    if "certificate required" in low or "certificate_required" in low:
        # mTLS (tls { verify: true }): the server refuses before any login.
        return ("not authorized: the server requires a TLS client certificate and refused "
                f"this one without it ({msg}); pass --tls-cert and --tls-key")
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return msg + " (the server certificate is not trusted: check --tls-ca)"
    return msg


async def close(nc, timeout: float = 2.0) -> None:
    """Close without ever hanging on a dead server."""
    if nc is None:
        return
    try:
        await asyncio.wait_for(nc.close(), timeout)
    except Exception:
        pass


# ---------------------------------------------------------------- streams
def stream_config(name: str, subjects, replicas: int = 1):
    """nats-py StreamConfig for one of our streams, from contract.STREAM_SETTINGS."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    s = c.STREAM_SETTINGS
    return StreamConfig(
        name=name,
        subjects=list(subjects),
        storage=StorageType(s["storage"]),
        retention=RetentionPolicy(s["retention"]),
        discard=DiscardPolicy(s["discard"]),
        duplicate_window=float(s["duplicate_window_s"]),
        max_age=float(s["max_age_s"]),
        max_bytes=int(s["max_bytes"]),
        max_msg_size=int(s["max_msg_size"]),
        num_replicas=int(replicas),
        description="hookscope: OTLP spans and metrics from Slurm hooks" if name == c.STREAM_NAME
        else "hookscope: messages the collector could not load, with the reason",
    )


def _differences(want, have) -> dict:
    """Fields of ``want`` that the live stream ``have`` does not match."""
    diff = {}
    for f in ("storage", "retention", "discard", "duplicate_window", "max_age", "max_bytes",
              "max_msg_size", "num_replicas"):
        w, h = getattr(want, f), getattr(have, f, None)
        if isinstance(w, float) or isinstance(h, float):
            if h is None or abs(float(w) - float(h)) > 1e-6:
                diff[f] = (h, w)
        elif w != h:
            diff[f] = (h, w)
    missing = set(want.subjects) - set(have.subjects or [])
    if missing:
        diff["subjects"] = (have.subjects, sorted(set(have.subjects or []) | set(want.subjects)))
    return diff


async def _reserving(name: str, want, call, timeout: float):
    """``call`` (creating or updating stream ``name`` to ``want``), with
    JetStream's no-room answer turned into :class:`StreamNoRoom`."""
    from nats.js.errors import APIError

    try:
        return await asyncio.wait_for(call, timeout)
    except APIError as exc:
        if getattr(exc, "err_code", None) == _ERR_NO_STORAGE:
            raise _no_room(name, want) from exc
        raise


# Settings the server refuses to change on a live stream.
_IMMUTABLE = ("storage", "retention")


async def ensure_stream(js, name: str, subjects, replicas: int = 1, timeout: float = 10.0):
    """Create ``name`` or bring it to our settings; returns its StreamInfo."""
    from nats.js.errors import NotFoundError

    want = stream_config(name, subjects, replicas)
    try:
        info = await asyncio.wait_for(js.stream_info(name), timeout)
    except NotFoundError:
        try:
            return await _reserving(name, want, js.add_stream(want), timeout)
        except asyncio.TimeoutError:
            raise NatsUnavailable(f"creating stream {name} timed out after {timeout}s "
                                  "(is JetStream enabled on the server: nats-server -js?)") from None
    except asyncio.TimeoutError:
        raise NatsUnavailable(f"stream {name}: no JetStream answer within {timeout}s "
                              "(is JetStream enabled on the server: nats-server -js?)") from None
    diff = _differences(want, info.config)
    if not diff:
        return info
    bad = {k: v for k, v in diff.items() if k in _IMMUTABLE}
    if bad:
        detail = ", ".join(f"{k} is {h!r}, want {w!r}" for k, (h, w) in bad.items())
        raise StreamMismatch(f"stream {name} exists with settings that cannot be changed in place "
                             f"({detail}); back it up and delete it (nats stream rm {name}) "
                             "so hookscope can create it, or rename it")
    # Keep subjects the operator added; add ours.
    merged = want
    merged.subjects = sorted(set(info.config.subjects or []) | set(want.subjects))
    return await _reserving(name, want, js.update_stream(merged), timeout)


async def ensure_streams(js, replicas: int = 1, timeout: float = 10.0, dlq: bool = True) -> dict:
    """Create or verify HOOKSCOPE and (``dlq``) HOOKSCOPE_DLQ; returns {name: StreamInfo}.
    The agent passes ``dlq=False``: it never publishes there."""
    if not 1 <= int(replicas) <= 5:
        raise NatsConfigError(f"replicas={replicas}: JetStream allows 1..5 (1 on a single "
                              "server, 3 on a 3-node cluster)")
    out = {}
    streams = [(c.STREAM_NAME, c.STREAM_SUBJECTS + c.HEADS_SUBJECTS)]
    if dlq:
        streams.append((c.DLQ_STREAM_NAME, c.DLQ_STREAM_SUBJECTS))
    for name, subjects in streams:
        out[name] = await ensure_stream(js, name, subjects, replicas, timeout)
    return out


def headers_for(msg_id: str, content_type: str) -> dict:
    return {c.HDR_MSG_ID: msg_id, c.HDR_SCHEMA: str(c.SCHEMA_VERSION),
            c.HDR_CONTENT_TYPE: content_type}
