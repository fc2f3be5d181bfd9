"""Who could have changed a file that root is about to obey or execute.

One judgement for hook scripts, hook directories, config and credential
files, modelled on sshd's StrictModes (``safe_path``): the file and every
directory above it, up to ``/``, must be owned by root (or the user hookscope
runs as) and writable by nobody else.  A symlink is judged by its target and
the target's directory chain, not by where the link sits: a root-owned 0755
script reached through a link from outside the hook directory is as safe as a
copy, and a link into a directory anybody can write is not.

One deliberate difference from sshd: a root-owned *sticky* directory above
the file (``/tmp``, mode 1777) is accepted, because others cannot rename or
replace entries they do not own there.  The directory a hook's scripts are
*listed from* gets no such pass: anybody who can create a file in it adds a
script.

Pure given the stats (``problem``); the walkers take a ``stat`` function so
tests can feed them fake trees.  Stdlib only: this is on the hook's hot path.
"""

import os
import stat as _stat


def _mode(st):
    return f"{_stat.S_IMODE(st.st_mode):04o}"


def problem(st, euid, what, path, sticky_ok=False):
    """What is unsafe about one file or directory (a sentence naming the path
    and the bit), or None.  ``sticky_ok``: a root-owned sticky directory may be
    writable by others (see the module doc)."""
    mode = st.st_mode
    bad = []
    if st.st_uid not in (0, euid):
        bad.append(f"owned by uid {st.st_uid}, not root")
    if not (sticky_ok and _stat.S_ISDIR(mode) and mode & _stat.S_ISVTX and st.st_uid == 0):
        if mode & 0o002:
            bad.append(f"writable by others (mode {_mode(st)}, bit o+w)")
        elif mode & 0o020:
            bad.append(f"writable by group (mode {_mode(st)}, bit g+w)")
    return f"{what} {path} is {' and '.join(bad)}" if bad else None


def fix_for(path):
    return f"chown root:root {path} && chmod go-w {path}"


def chain_problems(directory, euid, stat=os.stat, cache=None, stop=()):
    """Problems of ``directory`` (a real, absolute path) and every directory
    above it, as for a file inside it; ``stop``: real paths already judged
    (the walk ends there).  ``cache`` maps a path to its problem (or None)."""
    out = []
    d = directory
    while True:
        if d in stop:
            break
        if cache is not None and d in cache:
            why = cache[d]
        else:
            try:
                why = problem(stat(d), euid, "directory", d, sticky_ok=True)
            except OSError as exc:
                why = f"directory {d} cannot be checked ({exc.strerror})"
            if cache is not None:
                cache[d] = why
        if why:
            out.append(why)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return out


def file_problems(path, euid=None, what="file", stat=os.stat, realpath=os.path.realpath, cache=None):
    """Problems of the file ``path`` after following symlinks: the target
    itself, then its directory chain.  Raises OSError when it cannot be stat'ed."""
    euid = os.geteuid() if euid is None else euid
    target = realpath(path)
    shown = path if target == path else f"{path} (-> {target})"
    out = []
    why = problem(stat(target), euid, what, shown)
    if why:
        out.append(why)
    out += chain_problems(os.path.dirname(target), euid, stat, cache)
    return out
