"""Layouts: presets of a few explicit knobs, and the pure planning step.

A layout decides, for the files of one or more hook directories, the order,
what is skipped and why, what a non-executable does, whether a shebang is
required, whether the first failure stops the run, what an empty directory
does, and which exit status the platform reports for a failure.

``plan()`` only looks (stat, one small read for the shebang); it never runs
anything.  ``hookscope plan`` prints its result; the runner executes it.
"""

import os
import stat as _stat

#: knob -> allowed values (None = any value of the right type)
KNOBS = {
    "order": ("reverse", "ascending"),
    "stop_on_failure": (True, False),
    "non_executable": ("fail", "skip", "skip_warn"),
    "require_shebang": (True, False),
    "name_filter": None,  # "glob" | "run-parts" | a regular expression
    "empty": ("fail", "ok"),
    "failure_status": ("script", "one"),
    "dirs_as": ("fail", "skip"),
    # A dangling symlink: like a non-executable (slurm: execve fails, 127), or
    # run-parts' "failed to stat component": status 1 and stop under
    # --exit-on-error, an error line and nothing else without it.
    "broken_link": ("as_non_executable", "error"),
    # Process-state knobs the runner reads (None: leave the caller's as is).
    "umask": None,  # run-parts forces umask 022 on every part
    "report_exit": (True, False),  # run-parts: "run-parts: X exited with return code N" on stderr
}

PRESETS = {
    # slurmd's Prolog=/dir/*: glob(3) (bytewise sort, no dotfiles), list built
    # in reverse, stop at first failure, non-executable -> 127, empty glob fails,
    # the failing script's status is the hook's status.
    "slurm": {
        "order": "reverse", "stop_on_failure": True, "non_executable": "fail",
        "require_shebang": False, "name_filter": "glob", "empty": "fail",
        "failure_status": "script", "dirs_as": "fail", "broken_link": "as_non_executable",
        "umask": None, "report_exit": False,
    },
    # Slinky's slurm-operator hook dispatcher: ascending, one at a time, stop at first failure.
    "slinky": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "fail",
        "require_shebang": False, "name_filter": "glob", "empty": "ok",
        "failure_status": "script", "dirs_as": "skip", "broken_link": "as_non_executable",
        "umask": None, "report_exit": False,
    },
    # Debian run-parts --exit-on-error (SUNK's run-parts.sh): C-locale ascending,
    # ^[A-Za-z0-9_-]+$ names only, non-executables silently skipped, exit 1;
    # a dangling symlink is an error (exit 1); umask 022; one stderr line per
    # failing part (verified against debianutils 5.7's /usr/bin/run-parts).
    "run-parts": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "skip",
        "require_shebang": False, "name_filter": "run-parts", "empty": "ok",
        "failure_status": "one", "dirs_as": "skip", "broken_link": "error",
        "umask": 0o022, "report_exit": True,
    },
    # TensorWave's dispatcher: lexicographic, non-executables skipped with a log
    # warning, no shebang refused, per-node log file.
    "tensorwave": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "skip_warn",
        "require_shebang": True, "name_filter": "glob", "empty": "ok",
        "failure_status": "script", "dirs_as": "skip", "broken_link": "as_non_executable",
        "umask": None, "report_exit": False,
    },
    # ``hookscope exec -- SCRIPT``: one script, run as its own caller (a
    # platform dispatcher such as DeepOps' epilog.sh) would: its status as is.
    "exec": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "fail",
        "require_shebang": False, "name_filter": "none", "empty": "fail",
        "failure_status": "script", "dirs_as": "fail", "broken_link": "as_non_executable",
        "umask": None, "report_exit": False,
        # A shell caller gets 126 for a file that exists but cannot be executed
        # (EACCES, ENOEXEC, a directory) and 127 for one that is not found.
        "shell_statuses": True,
    },
}

#: Status of a script that cannot be executed (shell and slurmd's run_command).
EXIT_NOT_EXECUTABLE = 127
#: Status of a script refused by strict permission checks (shell: "found but
#: cannot execute").  A refusal is a failure in every layout.
EXIT_REFUSED = 126

_RUN_PARTS_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

# Plan entry actions.
RUN = "run"
SKIP = "skip"
FAIL = "fail"  # counts as a failed script with EXIT_NOT_EXECUTABLE
REFUSE = "refuse"  # counts as a failed script with EXIT_REFUSED


class LayoutError(ValueError):
    pass


def knobs_for(layout, **overrides):
    """The preset's knobs with any non-None overrides applied and checked."""
    if layout not in PRESETS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(PRESETS)}")
    k = dict(PRESETS[layout])
    for name, value in overrides.items():
        if value is None:
            continue
        if name == "keep_going":
            if value:
                k["stop_on_failure"] = False
                k["failure_status"] = "one"
            continue
        if name not in KNOBS:
            raise LayoutError(f"unknown layout knob {name!r}")
        allowed = KNOBS[name]
        if allowed is not None and value not in allowed:
            raise LayoutError(f"knob {name} = {value!r}; choose one of {allowed}")
        k[name] = value
    return k


def name_ok(name, name_filter):
    """Does ``name`` pass the layout's name filter?"""
    if name_filter in (None, "none"):
        return True
    if name_filter == "glob":
        return not name.startswith(".")
    if name_filter == "run-parts":
        return bool(name) and all(c in _RUN_PARTS_OK for c in name)
    import re

    return re.fullmatch(name_filter, name) is not None


def _sort_key(name):
    # glob(3) and run-parts in the C locale compare bytes, not code points.
    return os.fsencode(name)


def order_names(names, knobs):
    names = sorted(names, key=_sort_key)
    if knobs["order"] == "reverse":
        names.reverse()
    return names


class Entry:
    """One file of the plan: what the runner will do with it and why.

    ``findings``: permission problems of this script (its file and, for a
    symlink, its target's directory chain), recorded whatever the strict mode.
    ``argv``: the arguments to start it with (``hookscope exec``); None means
    none at all, as slurmd gives.
    """

    __slots__ = ("path", "action", "reason", "st", "warn", "findings", "argv")

    def __init__(self, path, action, reason=None, st=None, warn=False, findings=(), argv=None):
        self.path, self.action, self.reason, self.st, self.warn = path, action, reason, st, warn
        self.findings = list(findings)
        self.argv = argv

    def __repr__(self):
        return f"Entry({self.path!r}, {self.action!r}, {self.reason!r})"


def _mode_bits(mode):
    return oct(_stat.S_IMODE(mode))


STRICT_OFF, STRICT_RECORD, STRICT_ENFORCE = "off", "record", "enforce"
#: Prefix of a permission finding in a hook's warnings (hook_started; contract.FINDING_PREFIX).
FINDING_PREFIX = "finding: "


def strict_mode(value):
    """The permission mode for a ``strict`` value.

    "record" (the default, ``"auto"``): unsafe ownership or modes become
    findings and everything runs as slurmd would run it.  "enforce" (``true``):
    they are refused with status 126.  "off" (``false``): nothing is checked.
    """
    if value is True or value == STRICT_ENFORCE:
        return STRICT_ENFORCE
    if value is False or value is None or value == STRICT_OFF:
        return STRICT_OFF
    if value in ("auto", STRICT_RECORD):
        return STRICT_RECORD
    raise LayoutError(f"strict = {value!r}; use true (= \"enforce\"), false (= \"off\") or \"auto\" (= \"record\")")


def check_strict(path, st, dir_path, dir_st, euid):
    """The first permission problem of a script or its directory, or None.  Pure given the stats."""
    from emitter import trust

    for what, p, s in (("directory", dir_path, dir_st), ("script", path, st)):
        if s is not None:
            why = trust.problem(s, euid, what, p)
            if why:
                return why
    return None


class _Judge:
    """Permission findings of one hook directory and of the scripts in it (trust.py's rules)."""

    def __init__(self, mode, euid, cache):
        self.mode, self.euid, self.cache = mode, euid, cache
        self.judged = frozenset()
        self.dir_findings = []

    def directory(self, path, st):
        """The listed directory gets no sticky pass (whoever can create a file in it adds a script)."""
        from emitter import trust

        real = os.path.realpath(path)
        why = trust.problem(st, self.euid, "hook directory", path)
        self.dir_findings = ([why] if why else []) + trust.chain_problems(
            os.path.dirname(real), self.euid, cache=self.cache)
        judged, d = set(), real
        while d not in judged:
            judged.add(d)
            d = os.path.dirname(d)
        self.judged = frozenset(judged)
        return self.dir_findings

    def script(self, path, lst, st):
        """A symlink is judged by its target and the target's directories (sshd's StrictModes)."""
        from emitter import trust

        if not _stat.S_ISLNK(lst.st_mode):
            why = trust.problem(st, self.euid, "script", path)
            return [why] if why else []
        target = os.path.realpath(path)
        why = trust.problem(st, self.euid, "script", f"{path} (-> {target})")
        return ([why] if why else []) + [f"{p}, above {path} (-> {target})" for p in trust.chain_problems(
            os.path.dirname(target), self.euid, cache=self.cache, stop=self.judged)]


def _has_shebang(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.read(fd, 2) == b"#!"
    except OSError:
        return False
    finally:
        os.close(fd)


def plan_dir(directory, knobs, strict=False, euid=None, _cache=None):
    """Entries for one hook directory (or a single script file), in run order.

    Returns (entries, warnings).  Raises nothing for a missing directory: it
    plans as empty, with a warning naming it.  Under strict "record" every
    permission finding is also a warning (prefixed FINDING_PREFIX); under
    "enforce" it refuses the script (and a finding of the directory refuses
    every script in it).
    """
    warnings = []
    mode = strict_mode(strict)
    judge = _Judge(mode, os.geteuid() if euid is None else euid, {} if _cache is None else _cache)
    try:
        dst = os.stat(directory)
    except OSError as exc:
        return [], [f"hook directory {directory} cannot be read ({exc.strerror}); nothing to run from it"]
    if not _stat.S_ISDIR(dst.st_mode):
        # A single script (Prolog=/etc/slurm/prolog.sh): it runs on its own;
        # its directory chain is judged like a symlink target's.
        judge.judged = frozenset()
        entries = [_entry(directory, knobs, judge)]
    else:
        try:
            names = os.listdir(directory)
        except OSError as exc:
            return [], [f"hook directory {directory} cannot be listed ({exc.strerror})"]
        if mode != STRICT_OFF:
            judge.directory(directory, dst)
        entries = []
        for name in order_names(names, knobs):
            path = os.path.join(directory, name)
            if not name_ok(name, knobs["name_filter"]):
                # glob(3) never returns dotfiles; run-parts ignores bad names silently.
                entries.append(Entry(path, SKIP, f"name does not match the {knobs['name_filter']} name filter"))
                continue
            entries.append(_entry(path, knobs, judge))
    if mode == STRICT_RECORD:
        warnings += [FINDING_PREFIX + f for f in judge.dir_findings]
        warnings += [FINDING_PREFIX + f for e in entries for f in e.findings]
    return entries, warnings


def _broken(path, knobs, exc):
    if knobs.get("broken_link") == "error":
        # run-parts: "failed to stat component X: ..."; exit 1 under
        # --exit-on-error, otherwise an error line and on to the next.
        why = f"failed to stat component {path}: {exc.strerror}"
        if knobs["stop_on_failure"]:
            return Entry(path, FAIL, why + " (run-parts exits 1 here)", None)
        return Entry(path, SKIP, why, None, True)
    # A dangling symlink: slurmd's execve fails -> 127.
    if knobs["non_executable"] == "fail":
        return Entry(path, FAIL, f"cannot stat ({exc.strerror}): status 127", None)
    return Entry(path, SKIP, f"cannot stat ({exc.strerror})", None, knobs["non_executable"] == "skip_warn")


def _entry(path, knobs, judge):
    try:
        lst = os.lstat(path)
        st = os.stat(path) if _stat.S_ISLNK(lst.st_mode) else lst
    except OSError as exc:
        return _broken(path, knobs, exc)
    findings = []
    if judge.mode != STRICT_OFF:
        findings = judge.script(path, lst, st)
        if not judge.judged and not _stat.S_ISLNK(lst.st_mode):  # a single script: its directory chain too
            from emitter import trust

            findings += trust.chain_problems(os.path.dirname(os.path.realpath(path)), judge.euid,
                                             cache=judge.cache)
        reasons = judge.dir_findings + findings
        if judge.mode == STRICT_ENFORCE and reasons:
            return Entry(path, REFUSE, "; ".join(reasons) + "; fix the ownership/mode (chown root, chmod go-w) "
                         "or set runner.strict = \"auto\" to record instead of refusing", st, findings=findings)
    e = _classify(path, st, knobs)
    e.findings = findings
    return e


def _classify(path, st, knobs):
    if _stat.S_ISDIR(st.st_mode):
        if knobs["dirs_as"] == "fail":
            return Entry(path, FAIL, "is a directory: status 127", st)
        return Entry(path, SKIP, "is a directory", st)
    if not _stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK | os.R_OK):
        if not _stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif not os.access(path, os.X_OK):
            why = f"not executable (mode {_mode_bits(st.st_mode)})"
        else:
            why = f"not readable (mode {_mode_bits(st.st_mode)})"
        if knobs["non_executable"] == "fail":
            return Entry(path, FAIL, why + ": status 127", st)
        return Entry(path, SKIP, why, st, knobs["non_executable"] == "skip_warn")
    if knobs["require_shebang"] and not _has_shebang(path):
        return Entry(path, REFUSE, f"{path} has no '#!' first line; add one (e.g. #!/bin/bash)", st)
    return Entry(path, RUN, None, st)


def plan(dirs, knobs, strict=False, euid=None):
    """Entries for every directory in turn, and the warnings (missing dirs, findings)."""
    entries, warnings = [], []
    cache = {}
    for d in dirs:
        e, w = plan_dir(d, knobs, strict, euid, cache)
        entries.extend(e)
        warnings.extend(w)
    return entries, warnings


def counted(entries):
    """Entries that count as scripts (run, failed or refused): they get an index."""
    return [e for e in entries if e.action != SKIP]
