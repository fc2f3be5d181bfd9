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
}

PRESETS = {
    # slurmd's Prolog=/dir/*: glob(3) (bytewise sort, no dotfiles), list built
    # in reverse, stop at first failure, non-executable -> 127, empty glob fails,
    # the failing script's status is the hook's status.
    "slurm": {
        "order": "reverse", "stop_on_failure": True, "non_executable": "fail",
        "require_shebang": False, "name_filter": "glob", "empty": "fail",
        "failure_status": "script", "dirs_as": "fail",
    },
    # Slinky's slurm-operator hook dispatcher: ascending, one at a time, stop at first failure.
    "slinky": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "fail",
        "require_shebang": False, "name_filter": "glob", "empty": "ok",
        "failure_status": "script", "dirs_as": "skip",
    },
    # Debian run-parts --exit-on-error (SUNK's run-parts.sh): C-locale ascending,
    # ^[A-Za-z0-9_-]+$ names only, non-executables silently skipped, exit 1.
    "run-parts": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "skip",
        "require_shebang": False, "name_filter": "run-parts", "empty": "ok",
        "failure_status": "one", "dirs_as": "skip",
    },
    # TensorWave's dispatcher: lexicographic, non-executables skipped with a log
    # warning, no shebang refused, per-node log file.
    "tensorwave": {
        "order": "ascending", "stop_on_failure": True, "non_executable": "skip_warn",
        "require_shebang": True, "name_filter": "glob", "empty": "ok",
        "failure_status": "script", "dirs_as": "skip",
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
    """One file of the plan: what the runner will do with it and why."""

    __slots__ = ("path", "action", "reason", "st", "warn")

    def __init__(self, path, action, reason=None, st=None, warn=False):
        self.path, self.action, self.reason, self.st, self.warn = path, action, reason, st, warn

    def __repr__(self):
        return f"Entry({self.path!r}, {self.action!r}, {self.reason!r})"


def _mode_bits(mode):
    return oct(_stat.S_IMODE(mode))


def check_strict(path, st, dir_path, dir_st, euid):
    """Why strict mode refuses ``path`` (str), or None.  Pure given the stats."""
    for what, p, s in (("directory", dir_path, dir_st), ("script", path, st)):
        if s is None:
            continue
        if s.st_mode & 0o002:
            return f"{what} {p} is writable by others (mode {_mode_bits(s.st_mode)}, bit o+w); chmod o-w it"
        if s.st_mode & 0o020:
            return f"{what} {p} is writable by group (mode {_mode_bits(s.st_mode)}, bit g+w); chmod g-w it"
        if s.st_uid not in (0, euid):
            return f"{what} {p} is owned by uid {s.st_uid}, not root; chown root it"
    return None


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


def plan_dir(directory, knobs, strict=False, euid=None):
    """Entries for one hook directory (or a single script file), in run order.

    Returns (entries, warnings).  Raises nothing for a missing directory: it
    plans as empty, with a warning naming it.
    """
    warnings = []
    euid = os.geteuid() if euid is None else euid
    try:
        dst = os.stat(directory)
    except OSError as exc:
        return [], [f"hook directory {directory} cannot be read ({exc.strerror}); nothing to run from it"]
    if not _stat.S_ISDIR(dst.st_mode):
        # A single script (Prolog=/etc/slurm/prolog.sh): it runs on its own.
        parent = os.path.dirname(directory) or "."
        try:
            pst = os.stat(parent)
        except OSError:
            pst = None
        return [_entry(directory, knobs, strict, euid, parent, pst, real_dir=None)], warnings
    try:
        names = os.listdir(directory)
    except OSError as exc:
        return [], [f"hook directory {directory} cannot be listed ({exc.strerror})"]
    real_dir = os.path.realpath(directory) if strict else None
    entries = []
    for name in order_names(names, knobs):
        path = os.path.join(directory, name)
        if not name_ok(name, knobs["name_filter"]):
            # glob(3) never returns dotfiles; run-parts ignores bad names silently.
            entries.append(Entry(path, SKIP, f"name does not match the {knobs['name_filter']} name filter"))
            continue
        entries.append(_entry(path, knobs, strict, euid, directory, dst, real_dir))
    return entries, warnings


def _entry(path, knobs, strict, euid, dir_path, dir_st, real_dir):
    try:
        lst = os.lstat(path)
        st = os.stat(path) if _stat.S_ISLNK(lst.st_mode) else lst
    except OSError as exc:
        # A dangling symlink: slurmd's execve fails -> 127.
        if knobs["non_executable"] == "fail":
            return Entry(path, FAIL, f"cannot stat ({exc.strerror}): status 127", None)
        return Entry(path, SKIP, f"cannot stat ({exc.strerror})", None, knobs["non_executable"] == "skip_warn")
    if strict:
        if _stat.S_ISLNK(lst.st_mode) and real_dir is not None:
            # Inside the directory at any depth is fine: a Kubernetes ConfigMap
            # mount is "10-x -> ..data/10-x", "..data -> ..2024_.../".
            target = os.path.realpath(path)
            if not target.startswith(real_dir.rstrip("/") + "/"):
                return Entry(path, REFUSE, f"symlink {path} points outside {dir_path} (to {target}); "
                             "copy the script into the directory", st)
        why = check_strict(path, st, dir_path, dir_st, euid)
        if why:
            return Entry(path, REFUSE, why, st)
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
    """Entries for every directory in turn, and the warnings (missing dirs)."""
    entries, warnings = [], []
    for d in dirs:
        e, w = plan_dir(d, knobs, strict, euid)
        entries.extend(e)
        warnings.extend(w)
    return entries, warnings


def counted(entries):
    """Entries that count as scripts (run, failed or refused): they get an index."""
    return [e for e in entries if e.action != SKIP]
