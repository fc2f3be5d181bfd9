"""The hookscope configuration file: one TOML file per node.

Resolution, once, at start: the ``path`` argument, then ``$HOOKSCOPE_CONFIG``,
then ``/etc/hookscope/hookscope.toml``.  A missing *default* file is an empty
configuration; a missing or invalid *explicit* file is a ConfigError naming the
file.  Sections: ``[runner]`` (validated here), ``[runner.dirs]``, and
``[agent]``, ``[collector]``, ``[dashboard]`` (each parsed by its owner).

On the hook's hot path: ``tomllib`` is imported only when a file exists.
"""

import os

from emitter import EmitterError, contract

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
    "timeout_s": (_NUM, 0, "per-script budget in seconds; 0 = none (Slurm's PrologEpilogTimeout applies)"),
    "kill_grace_s": (_NUM, 1.0, "seconds between SIGTERM and SIGKILL when the budget expires"),
    "safe_path": (str, SAFE_PATH, "PATH given to scripts when PATH is unset (slurmd's case)"),
    "strict": ((bool, str), "auto", "permission checks: true, false, or auto (on when running as root)"),
    "empty_ok": (bool, False, "an empty hook directory succeeds (with a warning) instead of failing"),
    "keep_going": (bool, False, "run-parts layout: run every script, exit 1 if any failed"),
    "output_bytes": (int, 16384, "tail of combined output kept per script"),
    "output_on": (str, "failure", "store output in the journal on: failure, always, never"),
    "passthrough": (bool, True, "copy the scripts' output to the runner's own stdout/stderr"),
    "redact": (list, [], "extra regular expressions whose matches are replaced by [REDACTED]"),
    "redact_builtin": (bool, True, "apply the built-in secret patterns (tokens, passwords, keys)"),
    "spool_max_bytes": (int, 256 * 1024 * 1024, "journal spool bound; oldest shipped-ready files evicted"),
    "fsync": (bool, True, "fdatasync the hook's journal file once at hook end"),
    "node": (str, "", "node name in records (default: short hostname)"),
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
        stamp = (os.path.abspath(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = _cache_get(stamp)
        if cached is not None:
            os.close(fd)
            return cached
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(p, f"cannot read ({exc.strerror})", "check the file and its disk") from None
    cfg = _parse(p, data)
    _cache_put(stamp, cfg)
    return cfg


def _cache_file(config_path):
    """One cache file per (euid, config path): concurrent users of other files never thrash it."""
    d = os.environ.get("HOOKSCOPE_CACHE_DIR")
    if not d:
        if os.geteuid() == 0:
            d = "/run/hookscope"
        else:
            rt = os.environ.get("XDG_RUNTIME_DIR")
            if not rt:
                return None
            d = os.path.join(rt, "hookscope")
    from emitter.journal import _sha256

    key = _sha256(os.fsencode(config_path)).hexdigest()[:16]
    return os.path.join(d, f"config.{os.geteuid()}.{key}.marshal")


def _cache_get(stamp):
    """The cached config for ``stamp``, trusted only if we own it and nobody else can write it."""
    path = _cache_file(stamp[0])
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        dst = os.stat(os.path.dirname(path))
        euid = os.geteuid()
        if st.st_uid != euid or st.st_mode & 0o077 or dst.st_uid != euid or dst.st_mode & 0o022:
            return None
        import marshal

        data = b""
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            data += b
        got_stamp, cfg = marshal.loads(data)
        return cfg if got_stamp == stamp else None
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)


def _cache_put(stamp, cfg):
    """Best effort: a cache that cannot be written only costs the next hook a parse."""
    path = _cache_file(stamp[0])
    if path is None:
        return
    import marshal

    try:
        data = marshal.dumps((stamp, cfg))
    except ValueError:  # a value marshal cannot hold (TOML datetimes): no cache
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _cache_trim(os.path.dirname(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


_CACHE_KEEP = 32


def _cache_trim(d):
    """Keep the newest few entries: one per config path, and a node has one or two."""
    try:
        names = [n for n in os.listdir(d) if n.endswith(".marshal")]
        if len(names) < _CACHE_KEEP:
            return
        names.sort(key=lambda n: os.stat(os.path.join(d, n)).st_mtime_ns)
        for n in names[: len(names) - _CACHE_KEEP + 1]:
            os.unlink(os.path.join(d, n))
    except OSError:
        pass


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


def salvage_config(path=None):
    """What of a config file that failed ``load_config`` is still usable.

    A typo in one key must not stop the hook from running the site's own
    directories (a failing hook drains the node): keep every [runner] key that
    validates on its own, drop the rest.  An unparsable file gives ``{}``.
    """
    p, _ = config_path(path)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError:  # missing or unreadable: nothing to salvage, and no tomllib to pay for
        return {}
    try:
        import tomllib

        cfg = tomllib.loads(data.decode("utf-8"))
    except ValueError:  # not UTF-8, invalid TOML
        return {}
    section = cfg.get("runner")
    good = {}
    if isinstance(section, dict):
        for key, value in section.items():
            try:
                validate_runner({key: value}, p)
            except ConfigError:
                continue
            good[key] = value
    cfg["runner"] = good
    return cfg


def validate_runner(section, path="<config>"):
    """Raise ConfigError for unknown keys, wrong types or bad values in [runner]."""
    if not isinstance(section, dict):
        raise ConfigError(path, "[runner] must be a table")
    for key, value in section.items():
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
        if types in (_NUM, int) and value < 0:
            raise ConfigError(path, f"runner.{key} must not be negative ({value!r})")
    strict = section.get("strict")
    if isinstance(strict, str) and strict != "auto":
        raise ConfigError(path, f"runner.strict = {strict!r}; use true, false or \"auto\"")
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


def runner_settings(cfg=None, **overrides):
    """The resolved [runner] settings: overrides (not None) > file > defaults."""
    section = (cfg or {}).get("runner", {})
    out = {k: (section[k] if k in section else d) for k, (_, d, _) in RUNNER_KEYS.items()}
    for k, v in overrides.items():
        if v is not None:
            if k not in RUNNER_KEYS:
                raise ConfigError("<arguments>", f"unknown runner setting {k!r}")
            out[k] = v
    return out


def context_dirs(settings, context):
    """The hook directories of ``context``: [runner.dirs] or DEFAULT_DIRS."""
    d = settings.get("dirs", {}).get(context)
    if d is None:
        d = DEFAULT_DIRS.get(context)
    if d is None:
        return []
    return [d] if isinstance(d, str) else list(d)


def strict_enabled(value):
    """strict = "auto" means on when the runner is root (slurmd's case)."""
    if value == "auto":
        return os.geteuid() == 0
    return bool(value)
