"""The node journal: append-only JSON-lines files with a per-node hash chain.

Format (docs/journal.md, field names in emitter.contract): one file per hook
invocation, ``<ts_ns:020d>-<hook_id>.jsonl``; each line the canonical JSON of
one record including its ``hash``; every record chained by ``seq``/``prev``
through ``chain.head``, which is read and updated under ``flock`` so
concurrent hooks on a node interleave safely.

Crash safety: a record is one ``os.write`` on an ``O_APPEND`` fd, so a
``kill -9`` leaves at most a torn last line; ``script_started`` is written
before the spawn.  Trouble (full disk, read-only spool, corrupt chain.head)
never raises into the runner: records are counted as lost in ``<dir>/lost``
(preallocated, rewritten in place) and one line goes to stderr.

Hot path: stdlib C modules only.  The encoding, ``seal`` and the chain head
are in emitter/journal_chain.py (re-exported here); eviction and reading a
file back, which a hook seldom or never needs, in emitter/journal_files.py.
"""

import os

from emitter import EmitterError
from emitter import contract as c
from emitter.journal_chain import (  # noqa: F401 (seal, dumps, _sha256: this module's public names)
    _chain_append,
    _open_head,
    _sha256,
    default_cluster,
    default_node,
    dumps,
    file_name,
    seal,
)

LOST_FILE = "lost"
# The spool bound is checked by scanning the directory (a stat per file), which
# costs ~0.3 s once a dead agent has let 256 MiB pile up.  That scan runs at
# most once per EVICT_CHECK_S per node (the marker's mtime says when it last
# ran), so a hook pays one stat, not one per waiting file; the bound overshoots
# by at most that many seconds of hooks.
EVICT_MARKER = ".evict-check"
EVICT_CHECK_S = 5.0
_LOST_WIDTH = 64
_TMP_PREFIX = ".tmp-"


def say(msg):
    """One line for slurmd's log.  os.write, not sys.stderr: Python sets
    sys.stderr to None when fd 2 was closed, and a message must never raise."""
    try:
        os.write(2, msg.encode("utf-8", "replace"))
    except OSError:
        pass


def ensure_std_fds():
    """Open /dev/null on any of fds 0-2 that is closed, so that no pipe or
    journal file of ours can land on them (and receive passed-through output)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            nfd = os.open(os.devnull, os.O_RDWR)
            if nfd != fd:  # the lowest free fd is taken first, so this fills fd
                os.dup2(nfd, fd)
                os.close(nfd)


class JournalError(EmitterError):
    """A standalone journal file could not be written (names the directory)."""


# ------------------------------------------------------------------ lost counter
def _read_lost(directory):
    """(count, since_ns, fd or None).  The fd stays open to reset/add in place."""
    try:
        fd = os.open(os.path.join(directory, LOST_FILE), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 0, 0, None
    try:
        n, since = os.pread(fd, _LOST_WIDTH, 0).split()[:2]
        return int(n), int(since), fd
    except (ValueError, OSError):
        return 0, 0, fd


def _lost_bytes(n, since):
    return (f"{n} {since}".ljust(_LOST_WIDTH - 1) + "\n").encode("ascii")


# ------------------------------------------------------------------ eviction
def evict_due(directory, interval=EVICT_CHECK_S):
    """True (and the marker touched) when the spool bound should be checked now."""
    marker = os.path.join(directory, EVICT_MARKER)
    if interval > 0:
        try:
            import time  # builtin module, already loaded

            if time.time() - os.stat(marker).st_mtime < interval:
                return False
        except OSError:
            pass
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.utime(marker)
    except OSError:
        pass  # a full or read-only spool: check every time rather than never
    return True


# ------------------------------------------------------------------ the writer
class Journal:
    """The journal file of one hook invocation.  Never raises OSError."""

    def __init__(self, directory, node=None, cluster=None, hook_id=None, fsync=True,
                 spool_max_bytes=256 * 1024 * 1024, pid=None, ts_ns=None, evict_interval=EVICT_CHECK_S):
        import time

        self._time_ns = time.time_ns
        self.dir, self._unsafe = str(directory), None
        if os.geteuid():  # not root: the uid's own spool (emitter/userspool.py)
            from emitter.userspool import spool_for
            self.dir, self._unsafe = spool_for(self.dir)
        self.node = node or default_node()
        self.cluster = cluster if cluster is not None else default_cluster()
        self.hook_id = hook_id or os.urandom(8).hex()
        self.fsync = fsync
        self.pid = os.getpid() if pid is None else pid
        self.path = os.path.join(self.dir, file_name(ts_ns or self._time_ns(), self.hook_id))
        self.fd = self.head_fd = None
        self.lost = 0
        self.lost_since = 0
        self.problem = None  # first OSError text, reported once on stderr
        self.carried = []  # warnings for hook_started: earlier losses, chain reset
        self._open(spool_max_bytes, evict_interval)

    def _fail(self, what, exc):
        if self.problem is None:
            self.problem = f"{what}: {exc.strerror or exc}"
            say(
                f"hookscope: journal {self.path} not written ({self.problem}); the hook's scripts "
                f"still run and its status is unchanged, but its records are lost (counted in "
                f"{os.path.join(self.dir, LOST_FILE)}); free space or make {self.dir} writable by root\n")

    def _open(self, spool_max_bytes, evict_interval):
        try:
            if self._unsafe:
                raise PermissionError(1, self._unsafe)
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            head = os.path.join(self.dir, c.CHAIN_HEAD_FILE)
            try:
                self.head_fd = os.open(head, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                self.head_fd = _open_head(self.dir)
                if any(n.endswith(c.JOURNAL_SUFFIX) for n in os.listdir(self.dir)):
                    # Journal files but no head: deleted or restored from a backup.
                    self.carried.append(f"{head} was missing while journal files exist; "
                                        "the hash chain restarts at seq 1")
        except OSError as exc:
            self._fail("cannot open the spool", exc)
            return
        n, since, lfd = _read_lost(self.dir)
        if lfd is None:
            try:  # preallocate while there is space, so a full disk can still count
                lfd = os.open(os.path.join(self.dir, LOST_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                os.pwrite(lfd, _lost_bytes(0, 0), 0)
            except OSError:
                pass
        elif n:
            self.carried.append(f"lost {n} journal records since {since} (ns); the spool was full or unwritable")
            self._lost_reset = True
        if lfd is not None:
            self._lost_fd = lfd
        evicted = None
        if spool_max_bytes and evict_due(self.dir, evict_interval):
            from emitter.journal_files import evict

            try:
                evicted = evict(self.dir, spool_max_bytes)
            except OSError:
                evicted = None
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._fail("cannot create the hook file", exc)
            return
        if evicted:
            files, nbytes, seqs = evicted
            self.append(c.K_SPOOL_EVICTED, {c.R_EVICTED_FILES: files, c.R_EVICTED_BYTES: nbytes,
                                            c.R_EVICTED_SEQS: seqs})

    def _on_reset(self, data, rec):
        # Called under the lock before ``rec`` is sealed: the warning goes
        # into the record that restarts the chain, when it has a warnings list.
        w = (f"{os.path.join(self.dir, c.CHAIN_HEAD_FILE)} was corrupt ({data[:80]!r}); "
             "the hash chain restarts at seq 1")
        if isinstance(rec.get(c.R_WARNINGS), list):
            rec[c.R_WARNINGS].append(w)
        say(f"hookscope: {w}\n")

    def append(self, kind, fields):
        """Write one record; returns the record (with seq/hash) or None if lost."""
        return self.append_many([(kind, fields, None)])[0]

    def append_many(self, items):
        """Write records [(kind, fields, ts_ns or None)] in one locked write (one
        flock, one head update, one ``os.write``: the runner's batches, see
        docs/runner.md "Speed"); returns each record (with seq/hash) or None if lost."""
        recs = []
        for kind, fields, ts in items:
            rec = {c.R_VERSION: c.SCHEMA_VERSION, c.R_KIND: kind, c.R_TS: ts or self._time_ns(),
                   c.R_NODE: self.node, c.R_CLUSTER: self.cluster, c.R_HOOK_ID: self.hook_id, c.R_PID: self.pid}
            rec.update(fields)
            if kind == c.K_HOOK_STARTED and self.carried:
                rec[c.R_WARNINGS] = list(rec.get(c.R_WARNINGS) or []) + self.carried
            recs.append(rec)
        if self.fd is None:
            for _ in recs:
                self._count_lost()
            return [None] * len(recs)
        fd = self.fd

        def write(data):
            if os.write(fd, data) != len(data):  # a short write on a full disk
                raise OSError(28, "short write (disk full?)")

        try:
            _chain_append(self.head_fd, recs, write, lambda data: self._on_reset(data, next(
                (r for r in recs if isinstance(r.get(c.R_WARNINGS), list)), recs[0])))
        except OSError as exc:
            self._fail("cannot append", exc)
            for _ in recs:
                self._count_lost()
            return [None] * len(recs)
        if any(r[c.R_KIND] == c.K_HOOK_STARTED for r in recs):
            self._lost_reset_done()
        return recs

    def _lost_reset_done(self):
        if getattr(self, "_lost_reset", False):
            self._lost_reset = False
            try:
                os.pwrite(self._lost_fd, _lost_bytes(0, 0), 0)
            except OSError:
                pass

    def _count_lost(self):
        if not self.lost:
            self.lost_since = self._time_ns()
        self.lost += 1

    def close(self):
        """fdatasync once, close, and add any lost records to <dir>/lost."""
        if self.fd is not None:
            try:
                if self.fsync:
                    os.fdatasync(self.fd)
            except OSError as exc:
                self._fail("fdatasync failed", exc)
            os.close(self.fd)
            self.fd = None
        lfd = getattr(self, "_lost_fd", None)
        if self.lost and lfd is not None:
            try:
                n, since = os.pread(lfd, _LOST_WIDTH, 0).split()[:2]
                os.pwrite(lfd, _lost_bytes(int(n) + self.lost, int(since) or self.lost_since), 0)
            except (OSError, ValueError):
                pass
        if lfd is not None:
            os.close(lfd)
            self._lost_fd = None
        if self.head_fd is not None:
            os.close(self.head_fd)
            self.head_fd = None


# ------------------------------------------------------------------ standalone files (agent)
def write_standalone(journal_dir, records, node=None, cluster=None):
    """Write agent records (node_event, journal_error) as one chained file.

    Fills v/ts/node/cluster/hook/pid where missing and seq/prev/hash always;
    the file appears atomically (temp name, then rename).  Returns its path.
    Raises JournalError naming the directory on failure.
    """
    import time

    directory = str(journal_dir)
    file_id = os.urandom(8).hex()
    now = time.time_ns()
    recs = []
    for r in records:
        r = dict(r)
        r.setdefault(c.R_VERSION, c.SCHEMA_VERSION)
        r.setdefault(c.R_TS, now)
        r.setdefault(c.R_NODE, node or default_node())
        r.setdefault(c.R_CLUSTER, cluster if cluster is not None else default_cluster())
        r.setdefault(c.R_HOOK_ID, file_id)
        r.setdefault(c.R_PID, os.getpid())
        if r.get(c.R_KIND) not in c.RECORD_KINDS:
            raise JournalError(f"journal {directory}: record kind {r.get(c.R_KIND)!r} is not one of {c.RECORD_KINDS}")
        recs.append(r)
    final = os.path.join(directory, file_name(now, file_id))
    tmp = os.path.join(directory, _TMP_PREFIX + file_name(now, file_id))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        head_fd = _open_head(directory)
    except OSError as exc:
        raise JournalError(f"journal {directory}: cannot open the spool ({exc.strerror}); "
                           "check that it exists and is writable") from None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            def write(data):
                if os.write(fd, data) != len(data):
                    raise OSError(28, "short write (disk full?)")
                os.fsync(fd)

            _chain_append(head_fd, recs, write, lambda data: say(
                f"hookscope: {directory}/{c.CHAIN_HEAD_FILE} was corrupt; the hash chain restarts at seq 1\n"))
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise JournalError(f"journal {directory}: cannot write a standalone file ({exc.strerror}); "
                           "free space or fix permissions") from None
    finally:
        os.close(head_fd)
    return final


# ------------------------------------------------------------------ reading
def read_records(path):
    """(records, damage) of one journal file (emitter/journal_files.py)."""
    from emitter.journal_files import read_records as read

    return read(path)
