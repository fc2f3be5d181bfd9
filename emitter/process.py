"""The process layer: start a script exactly as slurmd's ``run_command`` (or
Debian's ``run-parts``) would, and end it the same way.  docs/runner.md says
what a script inherits and why.

slurmd style (every layout but run-parts): the runner's own start-up state
(environment bytes, ignored and blocked signals, umask, rlimits, cwd), stdin
``/dev/null`` opened read-write, stdout and stderr on one pipe, fds >= 3
closed, a process group of its own.  The pipe is read until EOF or the
per-script timeout; then the script is reaped and its group gets SIGTERM and,
10 ms later, SIGKILL (the sleep is skipped when the group is already empty).

run-parts style: the runner's own stdin, fds and process group, umask 022
(the layout's ``umask`` knob), SIGCHLD default and unblocked (run-parts
catches and blocks it, and restores the mask for the child).  run-parts waits
for the child only: a background daemon that holds the output pipe keeps
being passed through while later scripts run.

``Origin`` is the state the runner was started with, before CPython changed it
(it ignores SIGPIPE and SIGXFSZ and installs a SIGINT handler at start-up, and
coerces LC_CTYPE into its environment).  The ``hookscope-hook`` launcher
(emitter/launcher.py) reads the original masks in /bin/sh before Python starts
and passes them in argv; the environment is read back from /proc.
"""

import os
import time

import _signal

_SIGTERM, _SIGKILL, _SIGCHLD, _SIGSTOP = _signal.SIGTERM, _signal.SIGKILL, _signal.SIGCHLD, _signal.SIGSTOP
#: slurmd's _kill_pg(): killpg(SIGTERM); usleep(10000); killpg(SIGKILL).
KILL_AFTER_S = 0.010
_READ = 65536
#: Set by the launcher: (SigIgn hex, SigBlk hex, launcher pid) of the process
#: slurmd started, read before CPython touched its signals.
LAUNCHED = None


def _bits(mask):
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _status_masks(pid="self"):
    """(SigBlk, SigIgn) of a process as ints, from /proc/PID/status."""
    blk = ign = None
    for line in _read(f"/proc/{pid}/status").split(b"\n"):
        if line.startswith(b"SigBlk:"):
            blk = int(line[7:], 16)
        elif line.startswith(b"SigIgn:"):
            ign = int(line[7:], 16)
            break
    return blk, ign


def _read(path, limit=1 << 22):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    return _read_fd(fd, limit)


def _read_fd(fd, limit=1 << 22):
    """Up to ``limit`` bytes of ``fd`` (b"" on a read error), which is closed."""
    try:
        chunks, n = [], 0
        while n < limit:
            b = os.read(fd, min(65536, limit - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def parse_environ(data):
    """An environ block (NUL-separated NAME=value) as an ordered bytes dict.

    posix_spawn takes a mapping: an entry without "=" cannot be passed on, and
    of a duplicated name the first is kept (what getenv(3) returns)."""
    env = {}
    for item in data.split(b"\0"):
        k, eq, v = item.partition(b"=")
        if eq and k and k not in env:
            env[k] = v
    return env


class Origin:
    """The process state the runner was started with.

    ``ignored``/``blocked``: signal numbers; ``env``: bytes dict in the
    original order; ``exact``: False when started without the launcher, where
    whether SIGPIPE and SIGXFSZ were ignored is unknown (CPython ignores both
    before any of our code runs) and scripts get them at their default."""

    __slots__ = ("ignored", "blocked", "env", "exact", "block")

    def __init__(self, ignored, blocked, env, exact, block=None):
        self.ignored, self.blocked, self.env, self.exact = ignored, blocked, env, exact
        #: the environment block's entries exactly as exec'd (duplicates, entries
        #: without "=" included), or None when it could not be read
        self.block = block


_ORIGIN = None


def origin():
    global _ORIGIN
    if _ORIGIN is None:
        _ORIGIN = _capture(LAUNCHED)
    return _ORIGIN


def _capture(launched):
    # Ignored signals: our own are what the launcher's shell gave its child,
    # the original ones (bash ignores SIGQUIT for itself and restores it for
    # children), except the two CPython ignores at start-up: those come from
    # the shell.  Blocked signals: the shell's, read before it ran anything
    # (dash clears the mask of the children it vforks).
    blk, ign = _status_masks()
    block = None
    clobbered = (1 << (_signal.SIGPIPE - 1)) | (1 << (_signal.SIGXFSZ - 1))
    exact = False
    if ign is not None:
        ign &= ~clobbered
    if launched:
        try:
            sh_ign, sh_blk, lpid = int(launched[0], 16), int(launched[1], 16), int(launched[2])
            exact = True
            ign = (ign or 0) | (sh_ign & clobbered)  # as slurmd gave them, read before Python ran
            blk = sh_blk
            if os.getppid() == lpid:  # the launcher's block is the environment slurmd gave
                block = _environ(lpid)
        except ValueError:
            pass
    if block is None:
        # As exec'd: before CPython's LC_CTYPE coercion, invalid UTF-8 intact.
        block = _environ("self")
    if block is None:  # no /proc: what CPython kept (its LC_CTYPE coercion included)
        env = dict(os.environb)
    else:
        env = parse_environ(b"\0".join(block))
    return Origin(_bits(ign or 0), _bits(blk or 0), env, exact, block)


def _environ(pid):
    """The entries of /proc/PID/environ, in order; None when it cannot be read."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    data = _read_fd(fd)
    return data.split(b"\0")[:-1] if data else []


def restore_ignored(org):
    """Put back SIG_IGN for every signal the runner was started with ignored
    (CPython may have replaced SIGINT's), so that scripts inherit it."""
    for n in org.ignored:
        if n in (_SIGCHLD, _SIGKILL, _signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(n) != _signal.SIG_IGN:
                _signal.signal(n, _signal.SIG_IGN)
        except (OSError, ValueError, RuntimeError):  # glibc's internal real-time signals
            pass


class Launch:
    """How every script of one hook is started, worked out once.

    ``items``: the environment block (b"NAME=value" in order); ``mask``: the
    blocked signals a script starts with; ``to_default``: signals CPython
    ignores itself that the runner was not started with ignored.  SIGCHLD is
    always default: the runner must see its scripts exit (an inherited SIG_IGN
    would auto-reap them); run-parts gives its children the same, and unblocks
    it."""

    __slots__ = ("style", "items", "env_map", "mask", "to_default", "sigdef", "umask")

    def __init__(self, org, style, env_map, umask=None, block=None):
        self.style, self.env_map, self.umask = style, env_map, umask
        # The exact block where the environment is the one the runner was
        # started with (posix_spawn, the fallback, can only take env_map).
        self.items = list(block) if block is not None else [k + b"=" + v for k, v in env_map.items()]
        ignored = set(org.ignored) - {_SIGCHLD}
        mask = set(org.blocked)
        if style == RUN_PARTS:
            mask.discard(_SIGCHLD)
        self.mask = sorted(mask)
        self.to_default = [n for n in (_signal.SIGPIPE, _signal.SIGXFSZ) if n not in ignored]
        # posix_spawn (fallback): every signal the runner was not started with ignored
        self.sigdef = [n for n in _signal.valid_signals() if n not in ignored and n not in (_SIGKILL, _SIGSTOP)]


def close_inherited_fds():
    """Mark fds >= 3 that the runner inherited close-on-exec (slurmd's closeall(3))."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass


def killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def kill_group(pgid):
    """slurmd's _kill_pg, without its 10 ms sleep when nobody is left."""
    if not killpg(pgid, 0):
        return False
    killpg(pgid, _SIGTERM)
    time.sleep(KILL_AFTER_S)
    killpg(pgid, _SIGKILL)
    return True


def decode_status(status):
    """(exit_code, signal) from a waitpid status, shell style (128+N for signal N)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


def pipe_inodes(fds):
    out = set()
    for fd in fds:
        try:
            out.add(os.fstat(fd).st_ino)
        except OSError:
            pass
    return out


# ------------------------------------------------------------------ one script
#: How scripts are started (docs/runner.md): slurmd's run_command, Debian's
#: run-parts, or as the runner itself was started (``hookscope exec``).
SLURM, RUN_PARTS, INHERIT = "slurm", "run-parts", "inherit"


class Child:
    """One started script: its pipes, its pidfd, and what became of it."""

    __slots__ = ("pid", "pgid", "fds", "pidfd", "t0", "status", "exit_at", "timed_out", "leftovers",
                 "eof_at", "inodes")

    def __init__(self, pid, pgid, fds, t0):
        self.pid, self.pgid, self.fds, self.t0 = pid, pgid, dict(fds), t0
        self.status = self.exit_at = self.eof_at = None
        self.timed_out = False
        self.leftovers = []
        self.inodes = pipe_inodes(self.fds)
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (kernel < 5.3): waitpid is polled
            self.pidfd = None

    def reap(self, block=True):
        if self.status is None:
            got, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if got:
                self.status, self.exit_at = status, time.monotonic()
        return self.status is not None

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        for lo in self.leftovers:
            lo.close()


def spawn(path, argv, launch, split_err):
    """Start ``path``; returns a Child.  Raises OSError when it cannot be executed."""
    fds = []
    out_r, out_w = os.pipe()
    fds.append((out_r, True))
    err_w = out_w
    if split_err:
        err_r, err_w = os.pipe()
        fds.append((err_r, False))
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if launch.style == SLURM else -1
    old_umask = os.umask(launch.umask) if launch.umask is not None else None
    t0 = time.monotonic()
    try:
        pid = _start(path, argv, launch, null, out_w, err_w)
    except BaseException:
        for fd, _ in fds:
            os.close(fd)
        raise
    finally:
        if old_umask is not None:
            os.umask(old_umask)
        for fd in {out_w, err_w, null} - {-1}:
            os.close(fd)
    return Child(pid, pid if launch.style == SLURM else os.getpgid(0), fds, t0)


def _start(path, argv, launch, null, out_w, err_w):
    global _FORK_EXEC
    while _FORK_EXEC is not False:
        try:
            return _fork_exec(path, argv, launch, null, out_w, err_w)
        except TypeError:  # another CPython's private signature: the other one, then posix_spawn
            _FORK_EXEC = 22 if _FORK_EXEC is None else False
    actions = [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    kw = {}
    if launch.style == SLURM:
        actions.insert(0, (os.POSIX_SPAWN_DUP2, null, 0))
        kw["setpgroup"] = 0
        close_inherited_fds()  # slurmd's closeall(3)
    # glibc's posix_spawn leaves its internal signals 32 and 33 ignored in the
    # child (slurmd's fork does not): the reason it is only the fallback.
    return os.posix_spawn(path, argv, launch.env_map, file_actions=actions, setsigdef=launch.sigdef,
                          setsigmask=launch.mask, **kw)


#: None: the 23-argument fork_exec; 22: without allow_vfork; False: posix_spawn.
_FORK_EXEC = None


def _fork_exec(path, argv, launch, null, out_w, err_w):
    """CPython's vfork+exec (what subprocess uses): the environment block as is,
    the parent's dispositions (ignored stay ignored, handlers reset), the
    parent's mask at the call (set to the original one around it), fds >= 3
    closed in slurmd style (closeall(3)), and no glibc posix_spawn quirks."""
    from _posixsubprocess import fork_exec

    errpipe_r, errpipe_w = os.pipe()
    old_mask = _signal.pthread_sigmask(_signal.SIG_SETMASK, launch.mask)
    for n in launch.to_default:
        _signal.signal(n, _signal.SIG_DFL)
    try:
        exe = os.fsencode(path)
        slurm = launch.style == SLURM
        # 3.11.x-3.12: 23 arguments, the last allow_vfork; some builds: 22, without it.
        args = [[os.fsencode(a) for a in argv], [exe], slurm, (errpipe_w,), None, launch.items,
                null, -1, -1, out_w, -1, err_w, errpipe_r, errpipe_w, False, False, 0 if slurm else -1,
                None, None, None, -1, None, True]  # gid, groups, uid None: no set*id, so vfork
        pid = fork_exec(*args[:_FORK_EXEC or 23])
    except BaseException:
        os.close(errpipe_r)
        raise
    finally:
        for n in launch.to_default:
            _signal.signal(n, _signal.SIG_IGN)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        os.close(errpipe_w)
    try:
        data = b""
        while True:
            part = os.read(errpipe_r, 512)
            if not part or len(data) > 4096:
                break
            data += part
    finally:
        os.close(errpipe_r)
    if data:
        os.waitpid(pid, 0)
        try:
            err = int(data.split(b":", 2)[1], 16)
        except (IndexError, ValueError):
            err = 8  # ENOEXEC
        raise OSError(err, os.strerror(err), path)
    return pid


def die_by(sig):
    """End like a script killed by ``sig``, so slurmd logs "killed by signal N"
    as it would for the bare script.  Through the launcher the waiting shell is
    the process slurmd reaps, so it gets the signal; returns only when that
    could not be done (the caller then exits 128+N)."""
    if sig is None or sig == _SIGSTOP:
        return
    target = os.getpid()
    if LAUNCHED:
        try:
            lpid = int(LAUNCHED[2])
        except (ValueError, IndexError):
            return
        if os.getppid() != lpid:
            return
        target = lpid
    if sig in _CORE_SIGNALS:  # the bare script may dump core; the runner or its shell must not
        try:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
            resource.prlimit(target, resource.RLIMIT_CORE, (0, hard))
        except (ImportError, OSError, ValueError):
            return
    try:
        if target == os.getpid():
            _signal.signal(sig, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [sig])
        os.kill(target, sig)
        if target == os.getpid():
            time.sleep(1)  # delivery is immediate; this is never reached
    except (OSError, ValueError):
        return


_CORE_SIGNALS = frozenset(getattr(_signal, n) for n in ("SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
                                                         "SIGFPE", "SIGSEGV", "SIGSYS", "SIGXCPU", "SIGXFSZ")
                          if hasattr(_signal, n))
