"""The hookscope configuration file: one TOML file per node.

Resolution, once, at start: the ``path`` argument, then ``$HOOKSCOPE_CONFIG``,
then ``/etc/hookscope/hookscope.toml``.  The runner's settings object built
from it is :class:`RunnerSettings` (the agent's:
:class:`emitter.agentsettings.AgentSettings`).  A missing *default* file is an empty
configuration; a missing or invalid *explicit* file is a ConfigError naming the
file.  Sections: ``[runner]`` (validated here), ``[runner.dirs]``, and
``[agent]``, ``[collector]``, ``[dashboard]`` (each parsed by its owner).

On the hook's hot path: ``tomllib`` is imported only when a file exists.
"""

import os

from emitter import EmitterError, contract
from emitter.configcache import CACHE_KEEP as _CACHE_KEEP  # noqa: F401 (tests)
from emitter.configcache import TRUSTED_TAG as _TRUSTED_TAG
from emitter.configcache import cache_get as _cache_get
from emitter.configcache import cache_last as _cache_last
from emitter.configcache import cache_put as _cache_put

DEFAULT_PATH = "/etc/hookscope/hookscope.toml"
ENV_CONFIG = "HOOKSCOPE_CONFIG"

#: slurmd starts hooks with no PATH at all; scripts get this one instead.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Where hookscope-hook looks for each context's scripts when [runner.dirs]
#: does not say (Debian's /etc/slurm, one directory per slot).
DEFAULT_DIRS = {
    "prolog_slurmd": "/etc/slurm/prolog.d",
    "epilog_slurmd": "/etc/slurm/epilog.d",
    "prolog_slurmctld": "/etc/slurm/prolog_slurmctld.d",
    "epilog_slurmctld": "/etc/slurm/epilog_slurmctld.d",
    "prolog_task": "/etc/slurm/task_prolog.d",
    "epilog_task": "/etc/slurm/task_epilog.d",
    "prolog_srun": "/etc/slurm/srun_prolog.d",
    "epilog_srun": "/etc/slurm/srun_epilog.d",
}

_NUM = (int, float)
#: [runner] key -> (accepted types, default, one-line doc used by docs/config.md)
RUNNER_KEYS = {
    "layout": (str, "slurm", "layout preset: slurm, slinky, run-parts, tensorwave"),
    "journal_dir": (str, contract.JOURNAL_DIR_DEFAULT, "node-local journal spool"),
    "timeout_s": (_NUM, 0, "per-script budget in seconds, as slurmd gives each script the full "
                           "PrologEpilogTimeout; 0 = none (see docs/config.md for slurm.conf's value)"),
    "kill_grace_s": (_NUM, 1.0, "deprecated, ignored by the runner: it ends a script as slurmd does "
                                "(SIGTERM, SIGKILL 10 ms later); still accepted so old files load"),
    "safe_path": (str, SAFE_PATH, "PATH given to scripts when PATH is unset and add_safe_path is on"),
    "add_safe_path": (bool, False, "give scripts safe_path as PATH when they have none (slurmd gives none)"),
    "strict": ((bool, str), "auto", "permissions: \"auto\"/\"record\" (findings, run as slurmd would), "
                                     "true/\"enforce\" (refuse, 126), false/\"off\""),
    "empty_ok": (bool, False, "an empty hook directory succeeds (with a warning) instead of failing"),
    "keep_going": (bool, False, "run-parts layout: run every script, exit 1 if any failed"),
    "output_bytes": (int, 16384, "tail of combined output kept per script"),
    "output_on": (str, "failure", "store output in the journal on: failure, always, never"),
    "passthrough": (bool, True, "copy the scripts' output to the runner's own stdout/stderr"),
    "redact": (list, [], "extra regular expressions whose matches are replaced by [REDACTED]"),
    "redact_budget_s": (_NUM, 0.5, "wall-clock budget of the site's redact patterns per stored output; "
                                   "over it, the output is withheld"),
    "redact_builtin": (bool, True, "apply the built-in secret patterns (tokens, passwords, keys)"),
    "spool_max_bytes": (int, 256 * 1024 * 1024, "journal spool bound; oldest shipped-ready files evicted"),
    "fsync": (bool, True, "fdatasync the hook's journal file once at hook end"),
    "journal_batch": (bool, True, "write a script's script_ended with the next script_started (or "
                                  "hook_ended): one locked write instead of two; false writes each at once"),
    "node": (str, "", "node name in records (default: $SLURMD_NODENAME, then the short hostname)"),
    "cluster": (str, "", "cluster name in records (default: SLURM_CLUSTER_NAME)"),
    "log_file": (str, "", "tensorwave per-node log file ({node} is replaced); '' = layout default"),
    "export": (str, "none", "after the hook: none, or direct (ship the file at once)"),
    "export_deadline_s": (_NUM, 0.3, "deadline of --export direct"),
    "dirs": (dict, {}, "[runner.dirs] context = directory or list of directories"),
    # Layout knobs: override the preset's value when present (see layouts.py).
    "order": (str, None, "knob: reverse (slurm glob) or ascending"),
    "stop_on_failure": (bool, None, "knob: stop at the first failing script"),
    "non_executable": (str, None, "knob: fail (status 127), skip, or skip_warn"),
    "require_shebang": (bool, None, "knob: refuse a script whose first line is not #!"),
    "name_filter": (str, None, "knob: none, run-parts (^[A-Za-z0-9_-]+$) or a regular expression"),
    "empty": (str, None, "knob: fail or ok (what an empty directory does)"),
}
_CHOICES = {
    "output_on": ("failure", "always", "never"),
    "export": ("none", "direct"),
    "order": ("reverse", "ascending"),
    "non_executable": ("fail", "skip", "skip_warn"),
    "empty": ("fail", "ok"),
}
#: numeric [runner] key -> (minimum, maximum, why that maximum)
_RANGES = {
    "timeout_s": (0, 65535, "Slurm's own hook timeouts are 16-bit seconds"),
    "kill_grace_s": (0, 3600, "an hour between SIGTERM and SIGKILL"),
    "export_deadline_s": (0, 60, "the deadline holds up the hook"),
    "redact_budget_s": (0, 60, "the budget holds up the hook"),
    "output_bytes": (0, 64 * 1024 * 1024, "64 MiB per script"),
    "spool_max_bytes": (0, 1 << 50, "1 PiB"),
}
_STRICT = ("auto", "record", "enforce", "off")
#: [runner] keys still accepted (old files load) that no longer do anything:
#: key -> what to say (a hook_started warning, and ``hookscope plan``)
DEPRECATED = {"kill_grace_s": "runner.kill_grace_s is deprecated and ignored: the runner ends a script as "
                              "slurmd does (SIGTERM to its group, SIGKILL 10 ms later); remove the key"}
#: keys naming a node or cluster: they become file names and subject tokens
_NAME_KEYS = ("node", "cluster")


class ConfigError(EmitterError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, path, problem, fix="fix the file, or point HOOKSCOPE_CONFIG at a valid one"):
        self.path, self.problem = path, problem
        super().__init__(f"hookscope config {path}: {problem}; {fix}")


def config_path(path=None):
    """(path, explicit) after argument > $HOOKSCOPE_CONFIG > default."""
    if path:
        return str(path), True
    env = os.environ.get(ENV_CONFIG)
    if env:
        return env, True
    return DEFAULT_PATH, False


def load_config(path=None):
    """Parse and validate the config file; ``{}`` when the default file is absent.

    A validated parse is cached (marshal, keyed by the file's identity and
    mtime/ctime) because importing tomllib costs 4-30 ms, more than a hook.
    """
    p, explicit = config_path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(p, "file not found", "create it (see docs/config.md) or fix the path") from None
        return {}
    except OSError as exc:
        raise ConfigError(p, f"cannot open ({exc.strerror})", "check its permissions") from None
    try:
        st = os.fstat(fd)
        if os.geteuid() == 0:
            problems = _untrusted(p, st)
            if problems:
                os.close(fd)
                raise UntrustedError(p, "config file", problems, _fallback_note(p))
        stamp = (os.path.abspath(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                 _TRUSTED_TAG)
        cached = _cache_get(stamp)
        if cached is not None:
            os.close(fd)
            return cached
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(p, f"cannot read ({exc.strerror})", "check the file and its disk") from None
    try:
        cfg = _parse(p, data)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the parser hits, the caller gets a ConfigError
        raise ConfigError(p, f"cannot be parsed ({type(exc).__name__}: {exc})") from None
    _cache_put(stamp, cfg)
    return cfg


class UntrustedError(ConfigError):
    """Root was about to obey a file that a non-root user owns or can write."""

    def __init__(self, path, what, problems, note=""):
        self.path, self.problem, self.problems = path, "; ".join(problems), list(problems)
        EmitterError.__init__(self, f"refusing {what} {path}: {self.problem}"
                                    f"{'; ' + note if note else ''}; fix: chown root:root {path} && "
                                    f"chmod go-w {path} (and the same for any directory named above)")


def _untrusted(path, st=None):
    """Problems of ``path`` (its stat ``st`` when already open) and its directory chain, as root."""
    from emitter import trust

    try:
        if st is None:
            return trust.file_problems(path, 0, "config file")
        real = os.path.realpath(path)
        why = trust.problem(st, 0, "config file", path if real == os.path.abspath(path) else f"{path} (-> {real})")
        return ([why] if why else []) + trust.chain_problems(os.path.dirname(real), 0)
    except OSError as exc:
        return [f"config file {path} cannot be checked ({exc.strerror})"]


def check_trusted(path, what="file", euid=None):
    """Raise UntrustedError (a ConfigError) when, as root, ``path`` -- a config
    file, a credential file, a directory whose contents root obeys -- or any
    directory above it is owned or writable by a non-root user.  The message
    names the file and the bit.  Not root: nothing to check (the file's owner
    is the only one who could act on it).  For the agent and the collector.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return
    from emitter import trust

    try:
        problems = trust.file_problems(path, 0, what)
    except OSError:
        return  # missing or unreadable: the caller's own open says so
    if problems:
        raise UntrustedError(path, what, problems)


def _fallback_note(p):
    if _cache_last(p) is not None:
        what = "the last trusted version of it (cached when it was still safe)"
    else:
        what = "the built-in defaults"
    return f"hookscope-hook and hookscope exec use {what} instead; other commands stop here"


def _parse(p, data):
    import tomllib

    try:
        cfg = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(p, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, f"invalid TOML: {exc}") from None
    validate_runner(cfg.get("runner", {}), p)
    return cfg


def validate_runner(section, path="<config>"):
    """Raise ConfigError for unknown keys, wrong types or bad values in [runner].

    Every value is checked here, once: type, choice, range (non-finite numbers
    such as ``inf`` and ``nan`` included), and strings that would break a path
    or a name (NUL, control characters).
    """
    if not isinstance(section, dict):
        raise ConfigError(path, "[runner] must be a table")
    for key, value in section.items():
        _check_key(path, key, value)
    for pat in section.get("redact", []):
        if not isinstance(pat, str):
            raise ConfigError(path, f"runner.redact entries must be strings, not {pat!r}")
    if section.get("redact"):
        import re

        for pat in section["redact"]:
            try:
                re.compile(pat)
            except re.error as exc:
                raise ConfigError(path, f"runner.redact pattern {pat!r} is not a valid regex ({exc})") from None
    if "layout" in section:
        from emitter.layouts import PRESETS

        if section["layout"] not in PRESETS:
            raise ConfigError(path, f"runner.layout = {section['layout']!r}; choose one of {', '.join(PRESETS)}")
    for ctx, d in section.get("dirs", {}).items():
        if ctx not in contract.CONTEXTS:
            raise ConfigError(path, f"[runner.dirs] has unknown context {ctx!r}",
                              f"use one of: {', '.join(contract.CONTEXTS)}")
        if not (isinstance(d, str) or (isinstance(d, list) and d and all(isinstance(x, str) for x in d))):
            raise ConfigError(path, f"runner.dirs.{ctx} must be a directory or a non-empty list of them")
        for x in [d] if isinstance(d, str) else d:
            if not x or "\0" in x:
                raise ConfigError(path, f"runner.dirs.{ctx} has an empty path or a NUL byte ({x!r})")


def _check_key(path, key, value):
    if key not in RUNNER_KEYS:
        known = ", ".join(sorted(RUNNER_KEYS))
        raise ConfigError(path, f"unknown key runner.{key}", f"use one of: {known}")
    types, _, _ = RUNNER_KEYS[key]
    if isinstance(value, bool) and types in (_NUM, int):
        raise ConfigError(path, f"runner.{key} must be a number, not {value!r}")
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(path, f"runner.{key} must be {want}, not {type(value).__name__} {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(path, f"runner.{key} = {value!r}; choose one of {', '.join(_CHOICES[key])}")
    if key == "strict" and isinstance(value, str) and value not in _STRICT:
        raise ConfigError(path, f"runner.strict = {value!r}; use true, false, \"auto\", \"record\", "
                                "\"enforce\" or \"off\"")
    if types in (_NUM, int):
        _check_number(path, key, value)
    if isinstance(value, str):
        _check_string(path, key, value)


def _check_number(path, key, value):
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(path, f"runner.{key} = {value!r} is not a finite number",
                          f"write a plain number of seconds/bytes for runner.{key}")
    if value < 0:
        raise ConfigError(path, f"runner.{key} must not be negative ({value!r})")
    lo, hi, why = _RANGES.get(key, (0, 1 << 62, "a 63-bit count"))
    if not lo <= value <= hi:
        raise ConfigError(path, f"runner.{key} = {value!r} is out of range ({lo} to {hi}: {why})",
                          f"set runner.{key} to at most {hi}")


def _check_string(path, key, value):
    if "\0" in value:
        raise ConfigError(path, f"runner.{key} contains a NUL byte", f"remove it from runner.{key}")
    if key in _NAME_KEYS and value and not name_ok(value):
        raise ConfigError(path, f"runner.{key} = {value!r} is not a usable name (letters, digits, '.', '_', "
                                "'-', at most 255 characters)", f"fix runner.{key}, or remove it for the default")
    if key == "journal_dir" and not value:
        raise ConfigError(path, "runner.journal_dir is empty", "remove it for the default or name a directory")


def name_ok(name):
    """A node or cluster name that can be a file name part and a subject token source."""
    return 0 < len(name) <= 255 and name not in (".", "..") and all(
        c.isalnum() or c in "._-" for c in name) and name.isascii()


def runner_settings(cfg=None, *, env=None, context=None, **overrides):
    """:class:`RunnerSettings` from overrides (not None) > file > defaults, without
    the environment or argument checks of :meth:`RunnerSettings.resolve` (the
    resolver every command uses); for tests and the demo.

    ``node`` is resolved here, once (see :func:`resolve_node`): an explicit
    override wins, then the node name Slurm gives the hook, then the file's,
    then the host name.  ``env``/``context`` default to the process's.
    """
    section = (cfg or {}).get("runner", {})
    out = {k: (section[k] if k in section else d) for k, (_, d, _) in RUNNER_KEYS.items()}
    for k, v in overrides.items():
        if v is not None:
            if k not in RUNNER_KEYS:
                raise ConfigError("<arguments>", f"unknown runner setting {k!r}")
            out[k] = v
    if not overrides.get("node"):
        env = os.environ if env is None else env
        out["node"] = resolve_node(out["node"], context or env.get("SLURM_SCRIPT_CONTEXT"), env)
    return RunnerSettings(out)


class RunnerSettings:
    """The runner's resolved, validated [runner] settings; frozen.  Read as
    attributes (``s.timeout_s``) or as a mapping (``s["timeout_s"]``,
    ``s.get("dirs", {})``); :meth:`replace` gives a validated copy.  A class
    with ``__slots__``, not a dataclass: it is on the hook's hot path."""

    __slots__ = ("_v",)

    def __init__(self, values):
        object.__setattr__(self, "_v", dict(values))

    def __setattr__(self, name, value):
        raise AttributeError(f"RunnerSettings is frozen: use .replace({name}=...)")

    __delattr__ = __setattr__

    def __setitem__(self, key, value):
        raise TypeError(f"RunnerSettings is frozen: use .replace({key}=...)")

    def __getattr__(self, name):
        try:
            return self._v[name]
        except KeyError:
            raise AttributeError(f"no runner setting {name!r}") from None

    def __getitem__(self, key):
        return self._v[key]

    def get(self, key, default=None):
        return self._v.get(key, default)

    def __contains__(self, key):
        return key in self._v

    def __iter__(self):
        return iter(self._v)

    def keys(self):
        return self._v.keys()

    def as_dict(self):
        return dict(self._v)

    def __eq__(self, other):
        return self._v == (other._v if isinstance(other, RunnerSettings) else other)

    __hash__ = None

    def __repr__(self):
        return f"RunnerSettings({self._v!r})"

    def replace(self, **changes):
        validate_runner(changes, "<arguments>")
        return RunnerSettings({**self._v, **changes})

    @classmethod
    def resolve(cls, cfg=None, *, env=None, context=None, validate_args=True, **args):
        """argument (not None) > environment > ``cfg["runner"]`` (validated by
        :func:`load_config`) > default; ``args`` are [runner] keys, checked
        here as ``<arguments>``.  ``env``/``context`` default to the process's."""
        env = os.environ if env is None else env
        args = {k: v for k, v in args.items() if v is not None}
        path, source = journal_dir(cfg, env, args.get("journal_dir"), reader="runner")
        if source in ("argument", JOURNAL_ENV):  # the file's value and the default: runner_settings
            args["journal_dir"] = path
        if validate_args and args:
            validate_runner(args, "<arguments>")
        return runner_settings(cfg, env=env, context=context, **args)


#: The journal directory's environment variable, for every component.
JOURNAL_ENV = "HOOKSCOPE_JOURNAL_DIR"
#: The agent's old name for it: still read (after JOURNAL_ENV) by the agent and the doctor, deprecated.
JOURNAL_ENV_OLD = "HOOKSCOPE_JOURNAL"


def journal_dir(cfg=None, env=None, arg=None, reader="agent"):
    """(path, source) of the journal directory, the one rule (docs/config.md):
    the argument, ``$HOOKSCOPE_JOURNAL_DIR``, ``$HOOKSCOPE_JOURNAL``
    (deprecated) and ``[agent] journal`` (these two for ``reader="agent"``:
    the agent and the doctor), ``[runner] journal_dir``, the default.
    ``source`` names the step ("argument", "HOOKSCOPE_JOURNAL_DIR", ...)."""
    env = os.environ if env is None else env
    if arg:
        return str(arg), "argument"
    if env.get(JOURNAL_ENV):
        return env[JOURNAL_ENV], JOURNAL_ENV
    if reader == "agent":
        if env.get(JOURNAL_ENV_OLD):
            return env[JOURNAL_ENV_OLD], JOURNAL_ENV_OLD
        v = _table(cfg, "agent").get("journal")
        if v:
            return v, "[agent] journal"
    v = _table(cfg, "runner").get("journal_dir")
    if v:
        return v, "[runner] journal_dir"
    return contract.JOURNAL_DIR_DEFAULT, "default"


def _table(cfg, name):
    sec = (cfg or {}).get(name)
    return sec if isinstance(sec, dict) else {}


#: Hook contexts run by slurmctld: the record's node is the controller.
CONTROLLER_CONTEXTS = ("prolog_slurmctld", "epilog_slurmctld")


def resolve_node(configured, context, env):
    """The node name for records.

    On a node: ``$SLURMD_NODENAME`` (slurmd's own name for itself, which
    ``NodeHostname=``, ``slurmd -N`` and pods make differ from the host
    name), then ``runner.node``, then the short host name.

    On the controller (PrologSlurmctld/EpilogSlurmctld): slurmctld builds
    the hooks' environment from scratch (prep_script_slurmctld.c: the job's
    variables and SLURM_SCRIPT_CONTEXT) and names no host; it knows itself as
    the SlurmctldHost entry matching its short host name.  So: ``runner.node``
    (a site that names its controllers differently says so there), then the
    short host name.  A SLURMD_NODENAME there would be another daemon's.
    """
    if context not in CONTROLLER_CONTEXTS:
        name = env.get("SLURMD_NODENAME")
        if name and name_ok(name):
            return name
    if configured:
        return configured
    return os.uname().nodename.split(".")[0]


def context_dirs(settings, context):
    """The hook directories of ``context``: [runner.dirs] or DEFAULT_DIRS."""
    d = settings.get("dirs", {}).get(context)
    if d is None:
        d = DEFAULT_DIRS.get(context)
    if d is None:
        return []
    return [d] if isinstance(d, str) else list(d)


def deprecations(cfg):
    """Warnings for the deprecated [runner] keys that ``cfg`` sets."""
    section = (cfg or {}).get("runner", {})
    return [msg for key, msg in DEPRECATED.items() if isinstance(section, dict) and key in section]


def strict_enabled(value):
    """The permission mode of a ``strict`` value: "off", "record" or "enforce".

    ``"auto"`` (the default) records unsafe ownership and modes as findings
    and runs what slurmd would run; ``true`` keeps its old meaning, enforce.
    The result is what layouts.plan(strict=...) takes.
    """
    from emitter.layouts import strict_mode

    return strict_mode(value)
