"""Start a command the way slurmd's run_command() starts a Prolog script.

    python slurmd_like.py ENVFILE TIMEOUT_MS -- PATH [ARG...]

From slurmd (src/common/run_command.c, 22.05-25.11): slurmd itself ignores
and blocks SIGPIPE; the child opens /dev/null O_RDWR on fd 0, dup2s one pipe
onto fds 1 and 2, closes fds >= 3, calls setpgid(0, 0) and execve(PATH,
[PATH], env) (ARGs, if any, follow PATH: run-parts
needs its directory).  The parent reads the pipe until EOF or the timeout, then reaps
the child and sends its group SIGTERM and, 10 ms later, SIGKILL.

ENVFILE is the environment block, NUL-separated, passed to execve as is (in
order, invalid UTF-8 kept).  The extra process state of a test (umask,
rlimits, more ignored or blocked signals) is set up by whoever runs this.
Prints "status=<waitpid status> timed_out=<0|1>" and then the output.
"""

import os
import signal
import sys
import time


def main(argv):
    envfile, timeout_ms, _, path, *args = argv
    with open(envfile, "rb") as f:
        env_items = [e for e in f.read().split(b"\0") if e]
    # slurmd's own state, inherited by every child it forks.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
    # CPython's own start-up changes, undone: slurmd (C) has neither.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # _run_command_child + run_command_child_pre_exec
        try:
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(w, 2)
            os.dup2(w, 1)
            os.closerange(3, 65536)
            os.setpgid(0, 0)
            _execve(path, args, env_items)
        finally:
            os._exit(127)
    os.close(w)
    out, t0, timed_out = b"", time.monotonic(), False
    import select

    while True:
        left = int(timeout_ms) / 1000 - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        b = os.read(r, 65536)
        if not b:
            break
        out += b
    if timed_out:
        _kill_pg(pid)
    _, status = os.waitpid(pid, 0)
    if not timed_out:
        _kill_pg(pid)
    sys.stdout.buffer.write(b"status=%d timed_out=%d\n" % (status, timed_out) + out)
    return 0


def _kill_pg(pid):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except OSError:
            pass
        if sig == signal.SIGTERM:
            time.sleep(0.01)


def _execve(path, args, env_items):
    """execve with the block exactly as given (os.execve wants a mapping)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    arr = (ctypes.c_char_p * (len(env_items) + 1))(*env_items, None)
    words = [os.fsencode(path)] + [os.fsencode(a) for a in args]
    argv = (ctypes.c_char_p * (len(words) + 1))(*words, None)
    libc.execve(os.fsencode(path), argv, arr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
