"""One NATS credential type for every component: :class:`NatsAuth`.

The agent, ``hookscope run --export direct``, ``hookscope doctor`` and the
collector all log in with the same fields (a ``.creds`` file, an nkey seed
file, user/password, a token, TLS CA/certificate/key), resolved the same way
(argument, then ``HOOKSCOPE_NATS_*``, then the component's config section)
and checked the same way (:meth:`NatsAuth.check`: each file exists and is
readable, and, as root, no non-root user owns or can write it).

Light on purpose (no dataclasses, no ssl until a TLS context is asked for):
``--export direct`` imports it inside the hook's 0.3 s deadline.
"""

import os

from emitter import EmitterError

#: field -> environment variable (the same names for the agent, direct and the collector)
ENV = {
    "creds": "HOOKSCOPE_NATS_CREDS", "nkey": "HOOKSCOPE_NATS_NKEY", "user": "HOOKSCOPE_NATS_USER",
    "password": "HOOKSCOPE_NATS_PASSWORD", "token": "HOOKSCOPE_NATS_TOKEN",
    "tls_ca": "HOOKSCOPE_NATS_TLS_CA", "tls_cert": "HOOKSCOPE_NATS_TLS_CERT", "tls_key": "HOOKSCOPE_NATS_TLS_KEY",
}
FIELDS = tuple(ENV)
#: the fields naming a file: field -> (label used in messages, command-line option)
FILES = {
    "creds": ("NATS creds file", "--creds"), "nkey": ("NATS nkey seed file", "--nkey"),
    "tls_ca": ("TLS CA file", "--tls-ca"), "tls_cert": ("TLS certificate", "--tls-cert"),
    "tls_key": ("TLS key", "--tls-key"),
}
URL_ENV = "HOOKSCOPE_NATS_URL"
DEFAULT_URL = "nats://127.0.0.1:4222"


class NatsConfigError(EmitterError):
    """Connection options are invalid (missing creds file, bad URL, TLS files)."""


def nats_url(section=None, env=None, arg=None, default=DEFAULT_URL):
    """The server URL(s) as one comma-separated string: argument, then
    ``$HOOKSCOPE_NATS_URL``, then the section's ``nats`` (a string or a list),
    then ``default``."""
    env = os.environ if env is None else env
    v = arg or env.get(URL_ENV) or (section or {}).get("nats") or default
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v


def split_urls(url):
    return [u.strip() for u in str(url).split(",") if u.strip()]


def resolve_fields(section=None, env=None, **args):
    """{field: value or None}: argument (not None) > ``HOOKSCOPE_NATS_*`` > ``section[field]``.
    The precedence alone, nothing checked (:meth:`NatsAuth.resolve` builds on it)."""
    bad = set(args) - set(FIELDS)
    if bad:
        raise TypeError(f"unknown NATS credential field(s) {', '.join(sorted(bad))}")
    env = os.environ if env is None else env
    section = section if isinstance(section, dict) else {}
    vals = {}
    for k in FIELDS:
        v = args.get(k)
        if v is None and env.get(ENV[k]):
            v = env[ENV[k]]
        if v is None:
            v = section.get(k)
        vals[k] = v
    return vals


class NatsAuth:
    """Frozen: how to log in to NATS.  Build with :meth:`resolve` (or the
    constructor), then :meth:`check` once before use."""

    __slots__ = FIELDS + ("section",)

    def __init__(self, creds=None, nkey=None, user=None, password=None, token=None, tls_ca=None,
                 tls_cert=None, tls_key=None, section="agent"):
        vals = dict(creds=creds, nkey=nkey, user=user, password=password, token=token, tls_ca=tls_ca,
                    tls_cert=tls_cert, tls_key=tls_key)
        for k, v in vals.items():
            if v is not None and not isinstance(v, str):
                raise NatsConfigError(f"{section}.{k} must be a string, not {v!r}")
            object.__setattr__(self, k, v or None)  # "" means unset, as for an empty env variable
        object.__setattr__(self, "section", section)

    def __setattr__(self, name, value):
        raise AttributeError(f"NatsAuth is frozen: build a new one instead of setting {name}")

    __delattr__ = __setattr__

    def __eq__(self, other):
        return isinstance(other, NatsAuth) and self.as_dict() == other.as_dict()

    def __hash__(self):
        return hash(tuple(self.as_dict().items()))

    def __repr__(self):
        shown = {k: ("***" if k in ("password", "token") else v) for k, v in self.as_dict().items() if v}
        return f"NatsAuth({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def resolve(cls, section=None, env=None, *, name="agent", **args):
        """argument (not None) > ``HOOKSCOPE_NATS_*`` > ``section[field]`` > unset.

        ``section`` is the component's config table ([agent], [collector]);
        ``name`` is its name in error messages.  Keys of ``args`` other than
        the credential fields are a TypeError (a typo must not pass silently).
        """
        vals = resolve_fields(section, env, **args)
        return cls(section=name, **vals)

    def as_dict(self):
        return {k: getattr(self, k) for k in FIELDS}

    def files(self):
        """[(field, label, path)] of the files this login names."""
        return [(k, FILES[k][0], getattr(self, k)) for k in FILES if getattr(self, k)]

    def check(self, euid=None, need_password=False, trust=True):
        """Raise :class:`NatsConfigError` naming the file or key and what to do:
        a named file that is missing or unreadable, a certificate without its
        key (or the reverse), as root a file a non-root user owns or can write
        (:func:`emitter.config.check_trusted`), and with ``need_password`` a
        user without a password.  ``trust=False`` leaves out the root check
        (:class:`emitter.natsio.NatsOptions` checks only the files' presence).
        Returns ``self``."""
        for k, label, path in self.files():
            opt = FILES[k][1]
            if not os.path.isfile(path):
                raise NatsConfigError(f"{label} {path} cannot be read (it does not exist or is not a file): "
                                      f"fix the path in "
                                      f"{opt} or [{self.section}] {k} of the config file")
            if not os.access(path, os.R_OK):
                raise NatsConfigError(f"{label} {path} is not readable by uid {os.getuid()}: fix its "
                                      f"permissions, or {opt} / [{self.section}] {k}")
            if trust:
                self._trusted(path, label, euid)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise NatsConfigError("TLS client auth needs both a certificate and a key: set both --tls-cert "
                                  f"and --tls-key (or [{self.section}] tls_cert and tls_key)")
        if need_password and self.password and not self.user:
            raise NatsConfigError(f"a NATS password is set (HOOKSCOPE_NATS_PASSWORD or [{self.section}] "
                                  "password) but no user: add --user")
        if need_password and self.user and not self.password:
            raise NatsConfigError(f"NATS user {self.user!r} has no password: set HOOKSCOPE_NATS_PASSWORD "
                                  f"or [{self.section}] password")
        return self

    @staticmethod
    def _trusted(path, label, euid):
        from emitter.config import check_trusted

        check_trusted(path, label, euid)  # UntrustedError names the file and the bit

    def check_trusted(self, euid=None):
        """Only the root-ownership half of :meth:`check` (every named file)."""
        for _, label, path in self.files():
            self._trusted(path, label, euid)
        return self

    @staticmethod
    def trust_problems(path, label):
        """As root, why ``path`` would be refused by :meth:`check` ([] when fine or not root)."""
        if os.geteuid() != 0:
            return []
        from emitter import trust

        try:
            return trust.file_problems(path, 0, label)
        except OSError:
            return []

    def tls_context(self, servers=()):
        """An ``ssl.SSLContext`` when TLS is configured or a URL says tls://, else None."""
        if not (self.tls_ca or self.tls_cert) and not any(str(u).startswith("tls://") for u in servers):
            return None
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def connect_kwargs(self, servers=()):
        """The login part of ``nats.connect(**kw)`` (nats-py's names)."""
        kw = {}
        if self.creds:
            kw["user_credentials"] = self.creds
        if self.nkey:
            kw["nkeys_seed"] = self.nkey
        if self.user:
            kw["user"] = self.user
            kw["password"] = self.password or ""
        if self.token:
            kw["token"] = self.token
        tls = self.tls_context(servers)
        if tls is not None:
            kw["tls"] = tls
        return kw
