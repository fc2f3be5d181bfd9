"""The collector's settings, resolved once, and its runtime configuration.

:class:`CollectorSettings` is what a deployment configures (``hookscope
collect``'s options, ``hookscope serve``, ``hookscope rebuild`` and
``compact``, and any library user): :func:`resolve_settings` builds it once,
in this order for every key,

1. the argument (a command-line option, or a library keyword),
2. the environment variable (:data:`KEYS`; the NATS credentials use the
   ``HOOKSCOPE_NATS_*`` names of :mod:`emitter.natsauth`),
3. the ``[collector]`` section of the config file (``--config``,
   ``$HOOKSCOPE_CONFIG``, else /etc/hookscope/hookscope.toml if present),
4. the default,

and validates every value there: an error names the option, environment
variable or config file and key, and what to do.  The click layer
(collector/cli.py) only declares the options (``envvar=`` for ``-h``) and
passes on what the user gave.

:class:`CollectorConfig` is the collector's runtime configuration (the
settings plus the server URL, an embedded server's included, and tuning
knobs); :meth:`CollectorSettings.collector_config` builds it.  The NATS
credentials are the one :class:`emitter.natsauth.NatsAuth` type; every file
they name is opened when a CollectorConfig (or a collector :class:`NatsAuth`)
is built, so a typo fails at start with the option to fix, not at first
connect.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, fields

from collector.errors import CollectorError
from emitter import EmitterError
from emitter import contract as C
from emitter import natsauth

#: reply-inbox prefix of the collector's connection (nats-py's default, spelled out:
#: gen_auth.collector_permissions allows subscribing to ``_INBOX.>``)
COLLECTOR_INBOX = "_INBOX"
DEFAULT_DB = "/var/lib/hookscope/hookscope.duckdb"
SECTION = "collector"
CONFIG_ENV = "HOOKSCOPE_CONFIG"


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


_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.I)


def memory_limit(value) -> str | None:
    """A DuckDB memory limit, checked: None for "", "none" or None (DuckDB's default)."""
    if value in (None, "") or str(value).lower() == "none":
        return None
    if not _MEMORY.match(str(value)):
        raise CollectorError(f"memory limit {value!r} is not a size like 512MB or 2GB")
    return str(value)


# ---------------------------------------------------------------- credentials
class NatsAuth(natsauth.NatsAuth):
    """:class:`emitter.natsauth.NatsAuth` as the collector uses it (``hookscope
    rebuild --from stream``, :class:`CollectorConfig`): named in errors as
    ``[collector]``, checked at construction (each file exists, is readable
    and, as root, trusted; a user has its password), file paths made
    absolute, and every problem a :class:`CollectorError`.  A NATS token is
    not a collector login (an agent's ``HOOKSCOPE_NATS_TOKEN`` must not leak in)."""

    __slots__ = ()

    def __init__(self, creds=None, nkey=None, user=None, password=None, tls_ca=None, tls_cert=None,
                 tls_key=None, section=SECTION):
        paths = {k: (os.path.abspath(os.path.expanduser(str(v))) if v not in (None, "") else None)
                 for k, v in dict(creds=creds, nkey=nkey, tls_ca=tls_ca, tls_cert=tls_cert,
                                  tls_key=tls_key).items()}
        try:
            super().__init__(user=user, password=password, section=section, **paths)
            self.check(need_password=True)
        except EmitterError as exc:  # NatsConfigError, emitter.config.UntrustedError
            raise CollectorError(str(exc)) from None


def nats_options(auth, url, name: str, request_timeout: float = 5.0):
    """``emitter.natsio.NatsOptions`` logging in as ``auth`` (a checked :class:`NatsAuth`).

    The reply inbox is nats-py's default, spelled out: ``_INBOX`` is what
    deploy/nats/gen_auth.py lets the collector user (alone) subscribe to;
    the nodes' own prefixes are ``contract.inbox_prefix(node)``."""
    from emitter.natsio import NatsOptions
    try:
        return NatsOptions.from_auth(auth, servers=url, name=name, max_reconnect_attempts=20,
                                     reconnect_time_wait=0.5, request_timeout=request_timeout,
                                     inbox_prefix=COLLECTOR_INBOX)
    except EmitterError as exc:  # emitter.natsio.NatsConfigError: bad URL, ...
        raise CollectorError(str(exc)) from None


# ---------------------------------------------------------------- runtime configuration
@dataclass(frozen=True)
class CollectorConfig:
    """The collector's runtime configuration, validated at construction: a bad
    file or value is a :class:`CollectorError` naming it.  Built by
    :meth:`CollectorSettings.collector_config` (or directly, by tests and
    library users who hold every value already)."""

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
    #: automatic compaction (collector/autocompact.py): collector files an
    #: open (table, day, cluster) partition may hold before they are merged; 0 = off
    compact_files: int = 64
    #: seconds after a UTC midnight before that day is compacted into one file
    compact_grace: float = 3600.0

    def __post_init__(self):
        if not 1 <= self.batch <= 10000:
            raise CollectorError(f"batch size {self.batch} must be within 1..10000")
        if isinstance(self.compact_files, bool) or not isinstance(self.compact_files, int) \
                or not 0 <= self.compact_files <= 100000:
            raise CollectorError(f"--compact-files (compact_files) {self.compact_files!r} must be an "
                                 "integer within 0..100000 (0 turns automatic compaction off)")
        if not 0 <= self.compact_grace <= 7 * 86400:
            raise CollectorError(f"--compact-grace (compact_grace) {self.compact_grace} must be within "
                                 "0..604800 seconds")
        if self.fetch_timeout <= 0:
            raise CollectorError("fetch timeout must be > 0 seconds")
        if self.max_ack_pending < 2 * self.batch:
            # two batches are in flight (one committing, one decoding)
            object.__setattr__(self, "max_ack_pending", 2 * self.batch)
        auth = NatsAuth(**{k: getattr(self, k) for k in _AUTH_KEYS})
        for k in _AUTH_KEYS:  # checked, paths made absolute
            object.__setattr__(self, k, getattr(auth, k))
        object.__setattr__(self, "memory_limit", memory_limit(self.memory_limit))
        self.nats_options()

    @property
    def auth(self) -> NatsAuth:
        return NatsAuth(**{k: getattr(self, k) for k in _AUTH_KEYS})

    def nats_options(self):
        return nats_options(self.auth, self.nats_url, f"hookscope-collector-{self.instance}",
                            self.request_timeout)


_AUTH_KEYS = ("creds", "nkey", "user", "password", "tls_ca", "tls_cert", "tls_key")


# ---------------------------------------------------------------- settings: argument > env > file > default
def _str(v):
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _urls(v):
    if isinstance(v, (list, tuple)) and all(isinstance(u, str) for u in v):
        return ",".join(v)
    return _str(v)


def _ranged(kind, lo=None, hi=None):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"must be a number, not {v!r}")
        try:
            n = kind(v.strip() if isinstance(v, str) else v)
        except ValueError:
            raise ValueError(f"{v!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise ValueError(f"{n} is not in the range {lo}<=x<={hi}")
        return n
    return conv


#: key -> (environment variable or None, default, converter) of every
#: [collector] key but the NATS credentials (:data:`emitter.natsauth.ENV`).
#: The command-line option is ``--`` + the key with ``-`` for ``_``.
KEYS = {
    "nats": ("HOOKSCOPE_NATS_URL", None, _urls),          # None: the embedded nats-server
    "db": ("HOOKSCOPE_DB", DEFAULT_DB, _str),
    "archive": ("HOOKSCOPE_ARCHIVE", None, _str),         # None: <db dir>/archive
    "name": ("HOOKSCOPE_COLLECTOR_NAME", None, _str),     # None: the short host name
    "batch": (None, 2048, _ranged(int, 1, 10000)),
    "replicas": (None, 1, _ranged(int, 1, 5)),
    "snapshot_interval": (None, 1.0, _ranged(float)),
    "metrics": ("HOOKSCOPE_COLLECTOR_METRICS", None, _str),
    "nats_port": (None, 4222, _ranged(int, 0, 65535)),
    "ack_wait": (None, 60.0, _ranged(float)),
    "memory_limit": ("HOOKSCOPE_COLLECTOR_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT, _str),
    "compact_files": (None, 64, _ranged(int, 0, 100000)),          # 0: no automatic compaction
    "compact_grace": (None, 3600.0, _ranged(float, 0, 604800)),
}
#: the NATS credential keys the collector takes (no token: see :class:`NatsAuth`)
AUTH_KEYS = _AUTH_KEYS
SECTION_KEYS = frozenset(KEYS) | frozenset(AUTH_KEYS)


class SettingsConflict(CollectorError):
    """Two settings that cannot go together (the CLI reports a usage error)."""


def option(key: str) -> str:
    return "--" + key.replace("_", "-")


def load_section(config=None, env=None) -> tuple[str, dict]:
    """(config file path, its ``[collector]`` table, checked and converted):
    ``config``, else ``$HOOKSCOPE_CONFIG``, else the default file when present.
    Unknown keys and bad values are errors naming the file and the key."""
    from emitter.configsection import load_section as load

    conv = {k: (KEYS[k][2] if k in KEYS else _str) for k in SECTION_KEYS}
    try:
        return load(SECTION, conv, config, env)
    except EmitterError as exc:  # ConfigError names the file, the key and the fix
        raise CollectorError(str(exc)) from None


def _value(key, args, env, section):
    """(value, where) of one key: argument > environment > section > default."""
    env_name, default, conv = KEYS[key]
    if args.get(key) is not None:
        where, raw = option(key), args[key]
    elif env_name and env.get(env_name):
        where, raw = f"${env_name}", env[env_name]
    elif section.get(key) is not None:
        return section[key]  # converted by load_section
    else:
        return default
    try:
        return conv(raw) if raw is not None else None
    except ValueError as exc:
        raise CollectorError(f"{where} {raw!r}: {exc}") from None


def _auth(args, env, section) -> natsauth.NatsAuth:
    """The credentials, resolved (not yet checked: see :class:`NatsAuth`).  The
    password is never an option (it would show in ps): the environment or the
    config file, and only for a user (an agent's password must not leak in)."""
    given = {k: args.get(k) for k in AUTH_KEYS if k != "password"}
    auth = natsauth.NatsAuth.resolve(section, env, name=SECTION, **given)
    password = args.get("password") or auth.password
    return natsauth.NatsAuth(**{**auth.as_dict(), "token": None,
                                "password": password if auth.user else None}, section=SECTION)


@dataclass(frozen=True)
class CollectorSettings:
    """The collector's settings, resolved and validated by :func:`resolve_settings`.

    Read as attributes (``s.db``) or as a flat mapping (``s["user"]``: the
    credential fields are :attr:`auth`'s)."""

    db: str
    archive: str
    nats: str | None = None
    nats_port: int = 4222
    name: str | None = None
    batch: int = 2048
    replicas: int = 1
    snapshot_interval: float = 1.0
    ack_wait: float = 60.0
    memory_limit: str | None = DEFAULT_MEMORY_LIMIT
    compact_files: int = 64
    compact_grace: float = 3600.0
    metrics: str | None = None
    auth: natsauth.NatsAuth = field(default_factory=lambda: natsauth.NatsAuth(section=SECTION))
    #: the config file whose [collector] section was read
    config_file: str | None = None

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "auth"}
        out.update({k: getattr(self.auth, k) for k in AUTH_KEYS})
        return out

    def __getitem__(self, key):
        return self.as_dict()[key]

    def get(self, key, default=None):
        return self.as_dict().get(key, default)

    def checked_auth(self) -> NatsAuth:
        """The credentials with their files checked (:class:`NatsAuth`)."""
        return NatsAuth(**{k: getattr(self.auth, k) for k in AUTH_KEYS})

    def collector_config(self, nats_url: str | None = None, **tuning) -> CollectorConfig:
        """The runtime configuration: ``nats_url`` (an embedded server's) or
        :attr:`nats`; ``tuning``: other :class:`CollectorConfig` fields."""
        url = nats_url or self.nats
        if not url:
            raise CollectorError(f"no NATS server: pass --nats URL (or set {KEYS['nats'][0]} or "
                                 f"[{SECTION}] nats), or start the embedded nats-server")
        kw = {"instance": self.name} if self.name else {}
        return CollectorConfig(nats_url=url, db=self.db, archive=self.archive, batch=self.batch,
                               replicas=self.replicas, snapshot_interval=self.snapshot_interval,
                               ack_wait=self.ack_wait, memory_limit=self.memory_limit,
                               compact_files=self.compact_files, compact_grace=self.compact_grace,
                               **{k: getattr(self.auth, k) for k in AUTH_KEYS}, **kw, **tuning)


def resolve_settings(args: dict | None = None, *, env=None, config=None, section=None,
                     **kw) -> CollectorSettings:
    """The collector's settings: argument > environment > ``[collector]`` > default.

    ``args`` (or keywords): [collector] keys, None meaning not given (the CLI
    passes what was typed or came from an option's ``envvar``).  ``env``: the
    environment (``os.environ``).  ``config``: the config file path
    (``--config``); ``section``, when the caller has already read it with
    :func:`load_section`, is ``(path, table)``."""
    args = {**(args or {}), **kw}
    unknown = set(args) - SECTION_KEYS
    if unknown:
        raise TypeError(f"resolve_settings: unknown key(s) {', '.join(sorted(unknown))}")
    env = os.environ if env is None else env
    path, sec = section if section is not None else load_section(config, env)
    v = {key: _value(key, args, env, sec) for key in KEYS}
    v["db"] = os.path.abspath(os.path.expanduser(v["db"]))
    v["archive"] = os.path.abspath(os.path.expanduser(v["archive"])) if v["archive"] else \
        os.path.join(os.path.dirname(v["db"]), "archive")
    if v["nats"] and args.get("nats_port") is not None:
        raise SettingsConflict("--nats-port is the embedded nats-server's port; with --nats URL "
                               "there is no embedded server: drop one of them")
    v["memory_limit"] = memory_limit(v["memory_limit"])
    try:
        auth = _auth(args, env, sec)
    except EmitterError as exc:  # a credential that is not a string
        raise CollectorError(f"hookscope config {path}: {exc}") from None
    return CollectorSettings(auth=auth, config_file=path, **v)
