"""The agent's settings, resolved once: :class:`AgentSettings` (frozen).

Order, for every key: the argument (a ``hookscope agent`` option, a library
keyword), then the environment (:data:`AgentSettings.ENV`), then ``[agent]``
of the config file, then the default.  Three keys have a shared rule:

- ``journal``: :func:`emitter.config.journal_dir` (the same function the
  runner and ``hookscope doctor`` use): argument, ``$HOOKSCOPE_JOURNAL_DIR``,
  ``$HOOKSCOPE_JOURNAL`` (deprecated), ``[agent] journal``, ``[runner]
  journal_dir``, default;
- ``node``/``cluster``: after ``[agent]``, ``[runner]``'s value, then the
  short host name / ``$SLURM_CLUSTER_NAME``;
- the NATS login (``creds nkey user password token tls_*``):
  :func:`emitter.natsauth.resolve_fields`, and :attr:`AgentSettings.auth` is
  the one :class:`emitter.natsauth.NatsAuth`.

``hookscope doctor`` resolves through :meth:`AgentSettings.resolve` too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from emitter import EmitterError
from emitter import contract as c
from emitter import natsauth, natsio
from emitter.config import JOURNAL_ENV, journal_dir

GPU_BACKENDS = ("auto", "nvml", "amdsmi", "replay", "none")


class AgentConfigError(EmitterError):
    """An [agent] setting, argument or environment variable is invalid."""


@dataclass(frozen=True)
class AgentSettings:
    nats: str = natsauth.DEFAULT_URL
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    journal: str = c.JOURNAL_DIR_DEFAULT
    node: str = ""
    cluster: str = ""
    replicas: int = 1
    create_streams: bool = True
    connect_timeout_s: float = 2.0
    publish_timeout_s: float = 5.0
    max_reconnect_attempts: int = 3
    poll_interval_s: float = 1.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    abandon_grace_s: float = 5.0
    stale_after_s: float = 6 * 3600.0
    gpu: str = "auto"  # auto | nvml | amdsmi | replay | none
    gpu_replay: str | None = None
    gpu_replay_block_s: float = 0.0  # replay only: simulate a hung driver (tests)
    gpu_interval_s: float = 10.0
    gpu_timeout_s: float = 2.0
    dcgm_job_map_dir: str | None = None
    metrics_backlog: int = 360  # metric rounds kept in memory while NATS is down
    node_state_interval_s: float = 0.0  # >0: watch `scontrol show node` for drain/down
    node_state_cmd: str = "scontrol show node {node} -o"
    batch_files: int = 64  # journal files per pipelined export
    batch_bytes: int = 4 * 1024 * 1024
    head_interval_s: float = 60.0  # signed chain heads, when one moved (and at stop); 0: only at stop
    extra: dict = field(default_factory=dict, compare=False)

    #: environment variable for each setting that has one (journal: see emitter.config.journal_dir)
    ENV = {"nats": natsauth.URL_ENV, **natsauth.ENV, "journal": JOURNAL_ENV, "node": "HOOKSCOPE_NODE",
           "cluster": "HOOKSCOPE_CLUSTER", "gpu": "HOOKSCOPE_GPU", "gpu_replay": "HOOKSCOPE_GPU_REPLAY"}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def gather(cls, cfg: dict | None = None, env=None, **args) -> dict:
        """{key: value or None}: the precedence alone, nothing checked or converted.
        ``hookscope doctor`` falls back on it to keep checking after :meth:`resolve` failed."""
        env = os.environ if env is None else env
        cfg = cfg or {}
        section = cfg.get("agent") if isinstance(cfg.get("agent"), dict) else {}
        runner = cfg.get("runner") if isinstance(cfg.get("runner"), dict) else {}
        auth = natsauth.resolve_fields(section, env, **{k: args.get(k) for k in natsauth.FIELDS})
        values = {}
        for name in cls.keys():
            if name in auth:
                values[name] = auth[name]
                continue
            if name == "nats":
                values[name] = natsauth.nats_url(section, env, args.get("nats"), default=None)
                continue
            if name == "journal":
                values[name] = journal_dir(cfg, env, args.get("journal"), reader="agent")[0]
                continue
            v = args.get(name)
            if v is None and name in cls.ENV and env.get(cls.ENV[name]):
                v = env[cls.ENV[name]]
            if v is None and name in section:
                v = section[name]
            if v is None and name in ("node", "cluster") and runner.get(name):
                v = runner[name]
            values[name] = v
        return values

    @classmethod
    def resolve(cls, cfg: dict | None = None, env=None, *, check_files: bool = True, **args) -> "AgentSettings":
        """argument (not None) > environment > [agent] section > [runner] journal/node/cluster > default,
        validated: an AgentConfigError names the key (``agent.<key>``) and what to do.

        ``check_files=False`` skips the NATS files' presence (the doctor checks them itself, in detail).
        """
        env = os.environ if env is None else env
        cfg = cfg or {}
        section = cfg.get("agent", {})
        if not isinstance(section, dict):
            raise AgentConfigError("config: [agent] must be a table")
        known = set(cls.keys())
        for k in section:
            if k not in known:
                raise AgentConfigError(f"config: unknown key agent.{k}; use one of: {', '.join(sorted(known))}")
        values = {k: _coerce(k, v, cls.__dataclass_fields__[k].default)
                  for k, v in cls.gather(cfg, env, **args).items()}
        values = {k: v for k, v in values.items() if v is not None}
        _check_values(values)
        values["node"] = values.get("node") or os.uname().nodename.split(".")[0]
        values["cluster"] = values.get("cluster") or env.get("SLURM_CLUSTER_NAME", "")
        s = cls(**values)
        try:
            if check_files:
                s.nats_options()
            else:
                natsio.NatsOptions(servers=s.nats)  # the URLs alone
        except natsio.NatsConfigError as exc:
            raise AgentConfigError(str(exc)) from None
        return s

    @property
    def auth(self) -> natsauth.NatsAuth:
        """The NATS login, as every component carries it."""
        return natsauth.NatsAuth(creds=self.creds, nkey=self.nkey, user=self.user, password=self.password,
                                 token=self.token, tls_ca=self.tls_ca, tls_cert=self.tls_cert,
                                 tls_key=self.tls_key, section="agent")

    def nats_options(self) -> natsio.NatsOptions:
        return natsio.NatsOptions.from_auth(
            self.auth, servers=self.nats, connect_timeout=self.connect_timeout_s,
            max_reconnect_attempts=max(1, int(self.max_reconnect_attempts)),
            request_timeout=self.publish_timeout_s, name=f"hookscope-agent-{self.node}",
            inbox_prefix=c.inbox_prefix(self.node))


def _coerce(name, v, default):
    """``v`` converted to the type of the key's default, or AgentConfigError naming ``agent.<name>``."""
    if v is None:
        return None
    want = type(default)
    if default is None or isinstance(default, dict):
        if not isinstance(v, str):
            raise AgentConfigError(f"agent.{name} must be a string, not {v!r}")
        return v
    if want is bool and not isinstance(v, bool):
        if str(v).lower() in ("1", "true", "yes", "0", "false", "no"):
            return str(v).lower() in ("1", "true", "yes")
        raise AgentConfigError(f"agent.{name} must be true or false, not {v!r}")
    if want in (int, float) and not isinstance(v, bool):
        try:
            v = want(v)
        except (TypeError, ValueError):
            raise AgentConfigError(f"agent.{name} must be a number, not {v!r}") from None
        if v < 0:
            raise AgentConfigError(f"agent.{name} must not be negative ({v})")
        return v
    if want is str and isinstance(v, list) and name == "nats":
        return ",".join(map(str, v))
    if want is str and not isinstance(v, str):
        raise AgentConfigError(f"agent.{name} must be a string, not {v!r}")
    return v


def _check_values(values: dict) -> None:
    gpu = values.get("gpu", "auto")
    if gpu not in GPU_BACKENDS:
        raise AgentConfigError(f"agent.gpu = {gpu!r}: use auto, nvml, amdsmi, replay or none")
    if gpu == "replay" and not values.get("gpu_replay"):
        raise AgentConfigError("agent.gpu = 'replay' needs agent.gpu_replay (a recorded "
                               "nvidia-smi -q -x or amd-smi metric --json file)")
    if values.get("gpu_interval_s", 10.0) < 0.05:
        raise AgentConfigError("agent.gpu_interval_s must be at least 0.05 seconds")
