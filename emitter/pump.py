"""Reading a script's output and ending it: slurmd's run_command_poll_child
and run-parts' waitpid, plus the evidence of what a script left behind (found
by emitter/leftovers.py, imported only when a script leaves something).

Every chunk read goes to ``sink(is_out, data, current)``; ``current`` is False
for output of an earlier script's leftover (run-parts style), which is passed
on but belongs to no record.
"""

import os
import select
import time

import _signal

from emitter.process import KILL_AFTER_S, kill_group, killpg

_SIGTERM, _SIGKILL = _signal.SIGTERM, _signal.SIGKILL
_READ = 65536
_STOP_GRACE_S = 0.005


# ------------------------------------------------------------------ output
class Tail:
    """The last ``limit`` bytes of a stream, without unbounded growth (O(1) amortized per byte)."""

    __slots__ = ("limit", "buf", "truncated")

    def __init__(self, limit):
        self.limit, self.buf, self.truncated = limit, bytearray(), False

    def add(self, data):
        self.buf += data
        if len(self.buf) > 2 * self.limit + _READ:
            del self.buf[: len(self.buf) - self.limit]
            self.truncated = True

    def value(self):
        if len(self.buf) > self.limit:
            self.truncated = True
            return bytes(self.buf[len(self.buf) - self.limit:]) if self.limit else b""
        return bytes(self.buf)


class TaskParser:
    """Names from TaskProlog's stdout protocol (export NAME=value / unset NAME).

    Values are never recorded: they may be secrets.
    """

    __slots__ = ("partial", "exported", "unset")

    def __init__(self):
        self.partial, self.exported, self.unset = b"", [], []

    def feed(self, data, final=False):
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        if len(self.partial) > 65536:  # a line that long is not a directive
            self.partial = b""
        for line in lines:
            line = line.strip()
            if line.startswith(b"export "):
                name = line[7:].split(b"=", 1)[0].strip()
                if name:
                    self.exported.append(name.decode("utf-8", "replace"))
            elif line.startswith(b"unset "):
                name = line[6:].strip()
                if name:
                    self.unset.append(name.decode("utf-8", "replace"))


def poll_ms(deadline, now):
    if deadline is None:
        return None
    return max(0, int((deadline - now) * 1000 + 0.999))




class Pump:
    """Reads a Child's pipes (and, run-parts style, pipes that earlier scripts'
    daemons still hold) and hands every chunk to ``sink(is_out, data, current)``."""

    def __init__(self, sink, stopped):
        self.sink, self.stopped = sink, stopped
        self.background = {}  # fd -> is_out: run-parts style, held by a leftover

    def _read(self, fd, table, poller, current):
        """One read of ``fd``: pass the chunk on, or close it at EOF.  False
        when nothing is there yet (a non-blocking pipe with a live writer)."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            os.close(fd)
            del table[fd]
            return True
        self.sink(table[fd], data, current)
        return True

    def _poller(self, ch):
        poller = select.poll()
        for fd in (*ch.fds, *self.background):
            poller.register(fd, select.POLLIN)
        if ch.pidfd is not None:
            poller.register(ch.pidfd, select.POLLIN)
        return poller

    def _round(self, ch, poller, wake):
        now = time.monotonic()
        if ch.pidfd is None and ch.status is None:
            wake = now + 0.005 if wake is None else min(wake, now + 0.005)
        for fd, _ in poller.poll(poll_ms(wake, now)):
            if fd == ch.pidfd:
                poller.unregister(fd)
                ch.reap()
            elif fd in ch.fds:
                self._read(fd, ch.fds, poller, True)
            elif fd in self.background:
                self._read(fd, self.background, poller, False)
            else:
                for lo in ch.leftovers:
                    if lo.pidfd == fd:
                        poller.unregister(fd)
                        lo.gone_at = time.monotonic()
        if ch.pidfd is None:
            ch.reap(block=False)

    def drain(self, ch, poller):
        """What is already in the pipes, without waiting for any writer."""
        for fd in list(ch.fds):
            os.set_blocking(fd, False)
            while fd in ch.fds and self._read(fd, ch.fds, poller, True):
                pass

    def _note_leftovers(self, ch, poller, pgid, inodes):
        from emitter.leftovers import Leftover, find_leftovers  # only when a script left something

        known = {lo.pid for lo in ch.leftovers}
        for pid, in_group in find_leftovers(pgid, inodes):
            if pid in known:
                continue
            lo = Leftover(pid, ch.exit_at if inodes else None, in_group)
            ch.leftovers.append(lo)
            if lo.pidfd is not None and poller is not None:
                poller.register(lo.pidfd, select.POLLIN)

    # -------------------------------------------------------------- slurmd
    def wait_slurm(self, ch, deadline):
        """run_command_poll_child: the pipe until EOF or the deadline, then the
        exit (run_command_waitpid_timeout), then the group ("kill children too")."""
        poller = self._poller(ch)
        stop_at = None
        while ch.fds:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                ch.timed_out = True
                break
            if self.stopped():
                # The runner's handler has sent the group SIGTERM; slurmd's
                # SIGKILL reaches the runner 10 ms after its SIGTERM.
                stop_at = stop_at or now + _STOP_GRACE_S
                if now >= stop_at:
                    break
            was = ch.status
            self._round(ch, poller, _earliest(deadline, stop_at))
            if was is None and ch.status is not None and ch.fds:
                self._round(ch, poller, time.monotonic())  # the EOF that came with the exit
                if ch.fds:  # someone else holds the pipe: evidence, before it goes
                    self._note_leftovers(ch, poller, ch.pgid, ch.inodes)
        ch.eof_at = time.monotonic()
        if self.stopped():
            self._kill_now(ch)
        elif ch.timed_out:
            self._group_end(ch, poller)
            self._reap_killed(ch)
        else:
            if ch.status is None:
                self._wait_exit(ch, poller, deadline)
            self._group_end(ch, poller)
        self.drain(ch, poller)
        self._settle(ch)

    def _wait_exit(self, ch, poller, deadline):
        """EOF came first (the script closed its stdout): wait for its exit until the deadline."""
        while not ch.reap(block=False):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                ch.timed_out = True
                self._group_end(ch, poller)
                self._reap_killed(ch)
                return
            if self.stopped():
                self._kill_now(ch)
                return
            if ch.pidfd is None:
                time.sleep(0.005)
            else:
                select.select([ch.pidfd], [], [], None if deadline is None else max(0.0, deadline - now))

    def _kill_now(self, ch):
        """The runner is being terminated: nothing of the script may outlive it."""
        killpg(ch.pgid, _SIGKILL)
        try:
            os.kill(ch.pid, _SIGKILL)
        except OSError:
            pass
        ch.reap()

    def _reap_killed(self, ch):
        """waitpid after _kill_pg, as slurmd.  A script that left its own group
        (setsid) was not hit: slurmd would wait for it; the runner does too, until
        slurmd's own timer terminates the runner."""
        while not ch.reap(block=False):
            if self.stopped():
                self._kill_now(ch)
                return
            if ch.pidfd is None:
                time.sleep(0.005)
            else:
                select.select([ch.pidfd], [], [], 0.1)

    def _group_end(self, ch, poller):
        """_kill_pg on the script's group: its members are evidence first."""
        if not killpg(ch.pgid, 0):
            return
        self._note_leftovers(ch, None, ch.pgid, ())
        for lo in ch.leftovers:
            if lo.in_group and lo.alive():
                lo.fate = "killed"
        kill_group(ch.pgid)

    def _settle(self, ch):
        if not ch.leftovers:
            return
        from emitter.leftovers import cmdline

        eof = ch.eof_at
        for lo in ch.leftovers:
            alive = lo.alive()
            if alive:  # it may have exec'd since it was found
                lo.cmd = cmdline(lo.pid) or lo.cmd
            if lo.gone_at is None and not alive:
                lo.gone_at = time.monotonic()
            if lo.since is not None:
                lo.held_ns = int((min(lo.gone_at or eof, eof) - lo.since) * 1e9)
            if lo.fate is None:
                lo.fate = "running" if alive else "exited"

    # -------------------------------------------------------------- run-parts
    def wait_run_parts(self, ch, deadline):
        """run-parts waits for the child only (waitpid); its pipes are passed on
        for as long as anyone holds them, while later scripts run."""
        poller = self._poller(ch)
        while ch.status is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                # The script shares the runner's group: only it is signalled.
                ch.timed_out = True
                _kill_pid(ch.pid)
                ch.reap()
                break
            if self.stopped():  # the group got slurmd's signal too; nothing to forward
                ch.reap(block=False)
                break
            self._round(ch, poller, deadline)
        ch.eof_at = time.monotonic()
        self.drain(ch, poller)
        if ch.fds and ch.status is not None:
            self._note_leftovers(ch, None, None, ch.inodes)
            for lo in ch.leftovers:
                lo.since = None  # run-parts does not wait for them: they hold no hook
        self.background.update(ch.fds)
        ch.fds.clear()
        self._settle(ch)

    def finish(self, wait):
        """End of the hook: pass on what leftovers still write, until EOF when the
        caller reads our output to EOF anyway (slurmd's pipe), else stop now."""
        poller = select.poll()
        for fd in self.background:
            poller.register(fd, select.POLLIN)
        while wait and self.background and not self.stopped():
            for fd, _ in poller.poll(100):
                self._read(fd, self.background, poller, False)
        for fd in self.background:
            os.close(fd)
        self.background.clear()



def _earliest(a, b):
    if a is None:
        return b
    return a if b is None else min(a, b)


def _kill_pid(pid):
    try:
        os.kill(pid, _SIGTERM)
        time.sleep(KILL_AFTER_S)
        os.kill(pid, _SIGKILL)
    except OSError:
        pass
