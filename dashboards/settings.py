"""The dashboard's settings, resolved once: :class:`DashboardSettings`.

Order, for every key (``hookscope dashboard``, ``hookscope report``, the
dashboard part of ``hookscope serve``, and library users of
:func:`dashboards.server.make_server`):

1. the argument (a command-line option typed, or a library keyword),
2. the environment variable (:data:`KEYS`),
3. the ``[dashboard]`` section of the config file (``--config``,
   ``$HOOKSCOPE_CONFIG``, else /etc/hookscope/hookscope.toml if present),
4. the default.

The store is one choice: the first of these levels that names a store (``db``
or ``archive``) gives it, so an environment variable never silently wins
over an explicit option; a level naming both keeps the DuckDB file (an
argument may give both, as ``hookscope serve`` does: the file wins once it
exists).  Every value is validated here (:meth:`DashboardSettings.__post_init__`)
and an error names the option, variable or file and key, and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from dashboards import DashboardError

SECTION = "dashboard"
CONFIG_ENV = "HOOKSCOPE_CONFIG"
TOKEN_ENV = "HOOKSCOPE_DASHBOARD_TOKEN"
DB_ENV = "HOOKSCOPE_DB"
ARCHIVE_ENV = "HOOKSCOPE_ARCHIVE"
DEFAULT_PORT = 8765  # hookscope dashboard's and hookscope serve's
_TOKEN_OK = re.compile(r"[A-Za-z0-9._~-]{16,256}")


class AuthConfigError(DashboardError):
    """A non-loopback bind without a token, or a token that cannot be one."""


class NoStore(DashboardError):
    """No store was given (the CLI reports a usage error)."""


def _str(v):
    if not isinstance(v, str):
        raise ValueError("must be a string")
    return v


def _port(v):
    if isinstance(v, bool):
        raise ValueError("must be a port number")
    try:
        n = int(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"{n} is not in the range 0<=x<=65535")
    return n


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return v.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError("must be true or false")


#: key -> (environment variable or None, default, converter).  Options:
#: --db, --archive, --host, --port, --token, --no-auth.
KEYS = {
    "db": (DB_ENV, None, _str),
    "archive": (ARCHIVE_ENV, None, _str),
    "host": (None, "127.0.0.1", _str),
    "port": (None, DEFAULT_PORT, _port),
    "token": (TOKEN_ENV, None, _str),
    "no_auth": (None, False, _bool),
}


def is_loopback(host) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DashboardSettings:
    """Validated at construction: a bad value is a :class:`DashboardError` naming it."""

    db: str | None = None
    archive: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    #: serve a non-loopback address without a token, on purpose (--no-auth)
    no_auth: bool = False
    #: the config file whose [dashboard] section was read
    config_file: str | None = None

    def __post_init__(self):
        if not self.db and not self.archive:
            raise NoStore(f"give the store with --db FILE or --archive DIR (or set {DB_ENV} / {ARCHIVE_ENV}, "
                          f"or [{SECTION}] db / archive in the config file)")
        if not self.token and not is_loopback(self.host) and not self.no_auth:
            raise AuthConfigError(
                f"refusing to serve the dashboard on {self.host} without a token: anyone who can reach "
                f"this address could read every job's hook output. Pass --token (or set {TOKEN_ENV}), "
                "bind 127.0.0.1 and use an SSH tunnel, or pass --no-auth to do it anyway")
        if self.token and not _TOKEN_OK.fullmatch(self.token):
            raise AuthConfigError("the dashboard token must be 16 to 256 characters of A-Z a-z 0-9 - _ . ~ "
                                  "(e.g. from 'openssl rand -hex 24')")
        try:
            _port(self.port)
        except ValueError as exc:
            raise DashboardError(f"dashboard port: {exc}") from None


def load_section(config=None, env=None) -> tuple[str, dict]:
    """(config file path, its ``[dashboard]`` table, checked and converted)."""
    from emitter import EmitterError
    from emitter.configsection import load_section as load

    try:
        return load(SECTION, {k: conv for k, (_, _, conv) in KEYS.items()}, config, env)
    except EmitterError as exc:  # ConfigError names the file, the key and the fix
        raise DashboardError(str(exc)) from None


def _levels(args, env, sec):
    """[(where, values)] from the argument down to the config file."""
    envs = {k: env[e] for k, (e, _, _) in KEYS.items() if e and env.get(e)}
    return [("argument", args), ("environment", envs), ("config", sec)]


def _store(levels):
    for where, vals in levels:
        db, archive = vals.get("db"), vals.get("archive")
        if db or archive:
            return (db, archive) if where == "argument" else ((db, None) if db else (None, archive))
    return None, None


def resolve_store(args: dict | None = None, *, env=None, config=None, section=None) -> tuple:
    """Only the store, ``(db, archive)``, by the same rule (``hookscope report``,
    which binds nothing); :class:`NoStore` when no level names one."""
    env = os.environ if env is None else env
    _, sec = section if section is not None else load_section(config, env)
    args = {k: v for k, v in (args or {}).items() if v is not None}
    db, archive = _store(_levels(args, env, sec))
    if not db and not archive:
        DashboardSettings()  # raises NoStore with the message
    return db, archive


def resolve_dashboard(args: dict | None = None, *, env=None, config=None, section=None,
                      **kw) -> DashboardSettings:
    """The dashboard's settings: argument > environment > ``[dashboard]`` > default.

    ``args`` (or keywords): :data:`KEYS`, None meaning not given.  ``env``:
    the environment (``os.environ``); ``config``: the config file path;
    ``section``: ``(path, table)`` when the caller has read it already."""
    args = {k: v for k, v in {**(args or {}), **kw}.items() if v is not None}
    unknown = set(args) - set(KEYS)
    if unknown:
        raise TypeError(f"resolve_dashboard: unknown key(s) {', '.join(sorted(unknown))}")
    env = os.environ if env is None else env
    path, sec = section if section is not None else load_section(config, env)
    levels = _levels(args, env, sec)
    values = {}
    for key, (env_name, default, conv) in KEYS.items():
        if key in ("db", "archive"):
            continue
        where, raw = next(((w, v[key]) for w, v in levels if v.get(key) not in (None, "")), (None, default))
        try:
            values[key] = conv(raw) if where in ("argument", "environment") else raw
        except ValueError as exc:
            name = f"${env_name}" if where == "environment" else "--" + key.replace("_", "-")
            raise DashboardError(f"{name} {raw!r}: {exc}") from None
    db, archive = _store(levels)
    return DashboardSettings(db=db, archive=archive, config_file=path, **values)
