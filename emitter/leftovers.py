"""Leftovers: the processes a script left behind (in its group, or holding its
output pipe after it exited), found by a bounded scan of /proc, and what
became of them.  docs/runner.md "Leftovers".  Imported only when a script
leaves something: a hook whose scripts end cleanly never loads it.
"""

import os
import select

from emitter.process import _read

_CMD_MAX = 256
_LEFTOVERS_MAX = 16
_SCAN_READLINKS_MAX = 20000


def cmdline(pid):
    raw = _read(f"/proc/{pid}/cmdline", 4096).rstrip(b"\0").replace(b"\0", b" ")
    if not raw:
        raw = b"[" + _read(f"/proc/{pid}/comm", 64).strip() + b"]"
    return raw.decode("utf-8", "replace")[:_CMD_MAX]


def find_leftovers(pgid, inodes):
    """[(pid, in_group)] of processes in group ``pgid`` or holding one of the
    pipes ``inodes``.  Only called when a script has exited and its output pipe
    is still open, or its group is not empty: a scan of /proc, bounded."""
    me = {os.getpid(), os.getppid()}
    names = [p for p in (n for n in _listdir("/proc")) if p.isdigit() and int(p) not in me]
    found, budget = [], _SCAN_READLINKS_MAX
    want = {f"pipe:[{i}]" for i in inodes}
    for p in names:
        stat = _read(f"/proc/{p}/stat", 1024)
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != b"Z" and pgid is not None and fields[2] == str(pgid).encode():
            found.append((int(p), True))
        elif want and budget > 0:
            fdnames = _listdir(f"/proc/{p}/fd")
            budget -= len(fdnames)
            for fdn in fdnames:
                try:
                    if os.readlink(f"/proc/{p}/fd/{fdn}") in want:
                        found.append((int(p), False))
                        break
                except OSError:
                    pass
        if len(found) >= _LEFTOVERS_MAX:
            break
    return found


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


class Leftover:
    """A process the script left behind: it held the output pipe after the
    script exited, or it was still in the script's group at the end."""

    __slots__ = ("pid", "cmd", "pidfd", "since", "gone_at", "fate", "in_group", "held_ns")

    def __init__(self, pid, since, in_group):
        self.pid, self.cmd, self.since, self.gone_at, self.fate = pid, cmdline(pid), since, None, None
        self.in_group, self.held_ns = in_group, None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def alive(self):
        if self.pidfd is not None and select.select([self.pidfd], [], [], 0)[0]:
            return False
        # A holder's exit closes its files (the pipe's EOF) before the kernel
        # marks it exited for its pidfd: one that is on its way out already
        # has PF_EXITING (0x4) in /proc/PID/stat's flags, so it counts as
        # exited, not as killed by the group's SIGTERM a moment later.
        try:
            fields = _read(f"/proc/{self.pid}/stat", 1024).rsplit(b")", 1)[-1].split()
            return fields[0] not in (b"Z", b"X") and not int(fields[6]) & 0x4
        except (IndexError, ValueError):
            return False

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
