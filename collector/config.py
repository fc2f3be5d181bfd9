"""The collector's configuration and NATS credentials, validated at construction.

``CollectorConfig`` is what ``hookscope collect`` builds after resolving
option > environment > ``[collector]`` in the config file > default
(collector/cli.py); ``NatsAuth`` is the credential part alone, for
``hookscope rebuild --from stream``.  Every file a config names is opened
here, so a typo fails at start with the option to fix, not at first connect.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from collector.errors import CollectorError
from emitter import contract as C

#: reply-inbox prefix of the collector's connection (nats-py's default, spelled out:
#: gen_auth.collector_permissions allows subscribing to ``_INBOX.>``)
COLLECTOR_INBOX = "_INBOX"


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def default_memory_limit(cgroup_files=_CGROUP_LIMITS) -> str:
    """Half the memory this process may use, at least 1 GiB.

    DuckDB keeps the key indexes it checks on every insert in memory: about
    16 bytes per stored row (the 30-minute soak ran out at 512MB with 31 M
    keyed rows, and a store that cannot commit is stuck).  Half is DuckDB's
    own advice for staying clear of the OOM killer, and leaves room for
    nats-server and the dashboard.  "The memory" is the machine's RAM or, when
    lower, the cgroup's limit (systemd MemoryMax=, a container's limit), which
    DuckDB's own default does not see.
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        total = 8 << 30
    for path in cgroup_files:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) = no limit; v1 reports a huge number instead
            total = min(total, int(text))
        break
    return f"{max(1024, total // 2 // 2**20)}MiB"


DEFAULT_MEMORY_LIMIT = default_memory_limit()


def default_instance() -> str:
    return C.subject_token(socket.gethostname().split(".")[0]) or "collector"


#: (field, label, option) of every file a CollectorConfig may name
_NATS_FILES = (("creds", "NATS creds file", "--creds"), ("nkey", "NATS nkey seed file", "--nkey"),
               ("tls_ca", "TLS CA file", "--tls-ca"), ("tls_cert", "TLS certificate", "--tls-cert"),
               ("tls_key", "TLS key", "--tls-key"))
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.I)


@dataclass
class CollectorConfig:
    """Validated at construction (the CLI resolves option > env > [collector] > default
    before it builds one): a bad file or value is a :class:`CollectorError` naming it."""

    nats_url: str
    db: str
    archive: str | None
    instance: str = field(default_factory=default_instance)
    durable: str = C.DURABLE_CONSUMER
    batch: int = 2048
    fetch_timeout: float = 0.5
    max_message_bytes: int = C.MAX_MESSAGE_BYTES
    replicas: int = 1
    ack_wait: float = 60.0
    max_ack_pending: int = 20000
    snapshot_interval: float = 1.0
    keep_raw: bool = True
    fsync: bool = True
    creds: str | None = None
    nkey: str | None = None       # file holding the collector's nkey seed
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    request_timeout: float = 5.0
    #: --once: give up after this long without a working consumer (a cluster
    #: re-elects stream and consumer leaders within ~10 s of losing a node)
    setup_timeout: float = 30.0
    #: DuckDB memory cap (its own default is 80 % of the machine's RAM); "" or "none" = DuckDB's default
    memory_limit: str | None = DEFAULT_MEMORY_LIMIT

    def __post_init__(self):
        if not 1 <= self.batch <= 10000:
            raise CollectorError(f"batch size {self.batch} must be within 1..10000")
        if self.fetch_timeout <= 0:
            raise CollectorError("fetch timeout must be > 0 seconds")
        if self.max_ack_pending < 2 * self.batch:
            # two batches are in flight (one committing, one decoding)
            self.max_ack_pending = 2 * self.batch
        check_auth(self)
        if self.memory_limit in (None, "") or str(self.memory_limit).lower() == "none":
            self.memory_limit = None
        elif not _MEMORY.match(str(self.memory_limit)):
            raise CollectorError(f"memory limit {self.memory_limit!r} is not a size like 512MB or 2GB")
        self.nats_options()

    def nats_options(self):
        return nats_options(self, self.nats_url, f"hookscope-collector-{self.instance}",
                            self.request_timeout)


def _trusted(path: str, label: str) -> None:
    """As root, a credential file a non-root user owns or can write is refused
    (emitter.config.check_trusted names the file and the bit)."""
    from emitter import EmitterError
    try:
        from emitter.config import check_trusted
    except ImportError:  # pragma: no cover - an emitter without it
        return
    try:
        check_trusted(path, label)
    except EmitterError as exc:
        raise CollectorError(str(exc)) from None


def check_auth(obj) -> None:
    """Validate and normalise the NATS credential fields of ``obj`` in place
    (``creds nkey user password tls_ca tls_cert tls_key``)."""
    for name, label, opt in _NATS_FILES:
        path = getattr(obj, name)
        if path in (None, ""):
            setattr(obj, name, None)
            continue
        path = os.path.abspath(os.path.expanduser(str(path)))
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CollectorError(f"{label} {path} cannot be read ({exc.strerror or exc}): fix "
                                 f"{opt} (or [collector] {name} in the config file)") from None
        _trusted(path, label)
        setattr(obj, name, path)
    if bool(obj.tls_cert) != bool(obj.tls_key):
        raise CollectorError("TLS client authentication needs both --tls-cert and --tls-key")
    if obj.password and not obj.user:
        raise CollectorError("a NATS password is set (HOOKSCOPE_NATS_PASSWORD or [collector] "
                             "password) but no user: add --user")
    if obj.user and not obj.password:
        raise CollectorError(f"NATS user {obj.user!r} has no password: set HOOKSCOPE_NATS_PASSWORD "
                             "or [collector] password")


def nats_options(auth, url, name: str, request_timeout: float = 5.0):
    """``emitter.natsio.NatsOptions`` from a checked ``auth`` (see :func:`check_auth`).

    The reply inbox is nats-py's default, spelled out: ``_INBOX`` is what
    deploy/nats/gen_auth.py lets the collector user (alone) subscribe to;
    the nodes' own prefixes are ``contract.inbox_prefix(node)``."""
    from emitter.natsio import NatsOptions
    try:
        return NatsOptions(servers=url, creds=auth.creds, nkey_seed=auth.nkey, user=auth.user,
                           password=auth.password, tls_ca=auth.tls_ca, tls_cert=auth.tls_cert,
                           tls_key=auth.tls_key, name=name, max_reconnect_attempts=20,
                           reconnect_time_wait=0.5, request_timeout=request_timeout,
                           inbox_prefix=COLLECTOR_INBOX)
    except CollectorError:
        raise
    except Exception as exc:  # emitter.natsio.NatsConfigError: bad URL, ...
        raise CollectorError(str(exc)) from None


@dataclass
class NatsAuth:
    """The credential fields alone (``hookscope rebuild --from stream``)."""

    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self):
        check_auth(self)
