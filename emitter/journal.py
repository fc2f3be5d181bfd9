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

Hot path: stdlib C modules only.  Records are encoded by ``dumps`` below, which
tests prove byte-identical to ``contract.canonical_json`` (importing json
costs ~5 ms, more than a no-op hook script).
"""

import os
import sys

from emitter import EmitterError
from emitter import contract as c

try:  # the builtin module, not hashlib (which loads OpenSSL: ~2 ms)
    if sys.version_info >= (3, 12):
        from _sha2 import sha256 as _sha256
    else:
        from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - a build without the builtin modules
    from hashlib import sha256 as _sha256

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


# ------------------------------------------------------------------ encoding
_ESC = {i: "\\u%04x" % i for i in range(32)}
_ESC.update({0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x08: "\\b", 0x0C: "\\f"})


def _enc(o, out):
    t = type(o)
    if t is str:
        out.append('"' + o.translate(_ESC) + '"')
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    elif t is dict:
        out.append("{")
        first = True
        for k in sorted(o):
            if type(k) is not str:
                raise TypeError(f"journal keys must be str, not {k!r}")
            if not first:
                out.append(",")
            first = False
            out.append('"' + (k if k.isidentifier() else k.translate(_ESC)) + '":')
            _enc(o[k], out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[")
        for i, v in enumerate(o):
            if i:
                out.append(",")
            _enc(v, out)
        out.append("]")
    elif t is float:
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError("journal records hold no NaN/Infinity")
        out.append(float.__repr__(o))
    elif isinstance(o, (str, int, float)):  # subclasses (e.g. IntEnum): plain value
        _enc((str if isinstance(o, str) else int if isinstance(o, int) else float)(o), out)
    else:
        raise TypeError(f"cannot journal {type(o).__name__} {o!r}")


_HOOK_KEY = b'"' + c.R_HOOK_ID.encode("ascii") + b'":'


def _py_dumps(obj):
    out = []
    _enc(obj, out)
    return "".join(out)


def _no_default(o):
    raise TypeError(f"cannot journal {type(o).__name__} {o!r}")


try:  # the C encoder json.dumps itself uses, without importing json (~5 ms)
    from _json import encode_basestring as _c_str
    from _json import make_encoder as _c_make_encoder

    # json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    _C_ENCODE = _c_make_encoder(None, _no_default, _c_str, None, ":", ",", True, False, False)
except ImportError:  # pragma: no cover - a build without _json
    _C_ENCODE = None


def dumps(obj):
    """canonical_json without importing json: sorted keys, no spaces, UTF-8.

    CPython's C encoder (what json.dumps calls) where it accepts the record;
    the pure-Python encoder otherwise, which names what cannot be journaled."""
    if _C_ENCODE is not None:
        try:
            return "".join(_C_ENCODE(obj, 0))
        except (TypeError, ValueError):
            pass
    return _py_dumps(obj)


def _clean(o):
    """Replace lone surrogates (undecodable file names) so the line is UTF-8."""
    if isinstance(o, str):
        return o.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(o, dict):
        return {_clean(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _splice_ok(record):
    """True when the top-level "hook" key directly follows where "hash" goes
    and no object or array before it could hold a nested "hook" key."""
    if c.R_HOOK_ID not in record:
        return False
    for k, v in record.items():
        if k < c.R_HOOK_ID and (k > c.R_HASH or type(v) in (dict, list, tuple)):
            return False
    return True


def _digests(record):
    """{path: sha256 hex} of the record's long strings (``contract.R_DIGESTS``):
    top-level values and the job's, longer than DIGEST_MIN_CHARS.  None: none."""
    out = None
    lim = c.DIGEST_MIN_CHARS
    for k, v in record.items():
        if type(v) is str and len(v) > lim:
            if out is None:
                out = {}
            out[k] = _sha256(v.encode("utf-8")).hexdigest()
    job = record.get(c.R_JOB)
    if type(job) is dict:
        for k, v in job.items():
            if type(v) is str and len(v) > lim:
                if out is None:
                    out = {}
                out[f"{c.R_JOB}.{k}"] = _sha256(v.encode("utf-8")).hexdigest()
    return out


def _hash_body(record):
    """The bytes the hash covers (contract.record_hash): long values by their
    digest, so a value cut in transit keeps the record verifiable."""
    record.pop(c.R_DIGESTS, None)
    record.pop(c.R_CUT, None)
    dg = _digests(record)
    if dg is None:
        return dumps(record).encode("utf-8"), False
    record[c.R_DIGESTS] = dg
    return dumps(c.digest_form(record)).encode("utf-8"), True


def seal(record):
    """Add the ``hash`` and return the line bytes (record is updated in place)."""
    record.pop(c.R_HASH, None)
    try:
        body, digested = _hash_body(record)
    except UnicodeEncodeError:
        record.update(_clean(record))
        body, digested = _hash_body(record)
    h = _sha256(body).hexdigest()
    record[c.R_HASH] = h
    if digested:  # the line holds the full values, not the hashed form
        return dumps(record).encode("utf-8") + b"\n"
    # "hash" sorts right before "hook", which every record has at the top
    # level; an unescaped '"hook":' can only be that key (quotes inside
    # strings are escaped and no nested object sorts before it).  Splicing
    # halves the encoding cost; tests check it equals canonical_json.
    i = body.find(_HOOK_KEY) if _splice_ok(record) else -1
    if i < 0:
        return dumps(record).encode("utf-8") + b"\n"
    return b"".join((body[:i], b'"hash":"', h.encode("ascii"), b'",', body[i:], b"\n"))


# ------------------------------------------------------------------ chain head
_HEX = frozenset("0123456789abcdef")


def _new_chain():
    return os.urandom(8).hex()


def _parse_head(data):
    """(seq, hash, chain) from chain.head bytes; None if corrupt.

    Empty (new or deleted head): a new chain at seq 0.  The two-token form
    written before chain ids existed keeps its seq/hash and gets a chain id
    (the append writes the three-token form back, so this happens once).
    """
    if not data:
        return 0, c.CHAIN_GENESIS, _new_chain()
    try:
        parts = data.decode("ascii").split()
        seq = int(parts[0])
        h = parts[1]
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if seq < 0 or len(h) != 64 or not _HEX.issuperset(h):
        return None
    if len(parts) == 2:
        return seq, h, _new_chain()
    if len(parts) != 3 or len(parts[2]) != 16 or not _HEX.issuperset(parts[2]):
        return None
    return seq, h, parts[2]


def _chain_append(head_fd, records, write, on_reset):
    """Assign chain/seq/prev/hash to ``records`` under the lock and ``write`` their lines.

    ``write(lines)`` must raise OSError on failure, in which case the head is
    put back (the records never existed).  A missing or corrupt head
    starts a new chain (new id, seq 1, prev GENESIS) so the store keeps the
    old chain's records apart from the new one's (same seq numbers).

    The head moves BEFORE the lines are written: a runner SIGKILLed between
    the two (slurmd kills 10 ms after its SIGTERM, while the runner writes its
    last records) leaves a gap that ``audit verify`` names, never two records
    with one seq, of which the store could keep only one.
    """
    import fcntl

    fcntl.flock(head_fd, fcntl.LOCK_EX)
    try:
        data = os.pread(head_fd, 256, 0)
        head = _parse_head(data)
        if head is None:
            on_reset(data)
            head = (0, c.CHAIN_GENESIS, _new_chain())
        seq, prev, chain = head
        lines = []
        for r in records:
            seq += 1
            r[c.R_CHAIN] = chain
            r[c.R_SEQ] = seq
            r[c.R_PREV] = prev
            lines.append(seal(r))
            prev = r[c.R_HASH]
        new = b"%d %s %s\n" % (seq, prev.encode("ascii"), chain.encode("ascii"))
        _put_head(head_fd, new, len(data))
        try:
            write(b"".join(lines))
        except OSError:
            try:
                _put_head(head_fd, data, len(new))
            except OSError:
                pass  # the head stays ahead: a gap, reported as lost below
            raise
    finally:
        fcntl.flock(head_fd, fcntl.LOCK_UN)


def _put_head(head_fd, data, old_len):
    os.pwrite(head_fd, data, 0)
    if old_len > len(data):
        os.ftruncate(head_fd, len(data))


def _open_head(directory):
    return os.open(os.path.join(directory, c.CHAIN_HEAD_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def default_node():
    return os.uname().nodename.split(".")[0]


def default_cluster():
    return os.environ.get("SLURM_CLUSTER_NAME", "")


def file_name(ts_ns, hook_id):
    return f"{ts_ns:020d}-{hook_id}{c.JOURNAL_SUFFIX}"


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
def _file_summary(path, size):
    """(complete, first_seq, last_seq) by scanning the canonical text, no json."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False, None, None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        return False, None, None  # torn tail: incomplete by definition
    if not lines:
        return False, None, None

    def seq(line):
        i = line.find(b',"seq":')
        if i < 0:
            return None
        j = i + 7
        k = j
        while k < len(line) and 48 <= line[k] <= 57:
            k += 1
        return int(line[j:k]) if k > j else None

    started = b'"kind":"' + c.K_HOOK_STARTED.encode() + b'"' in data
    complete = (b'"kind":"' + c.K_HOOK_ENDED.encode() + b'"' in lines[-1]) or not started
    return complete, seq(lines[0]), seq(lines[-1])


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


def evict(directory, max_bytes, keep=()):
    """Delete oldest COMPLETE journal files until the spool is under 90 % of the bound.

    Returns None when nothing was evicted, else (files, bytes, [first_seq, last_seq]).
    """
    files, total = [], 0
    with os.scandir(directory) as it:
        for e in it:
            if e.name.endswith(c.JOURNAL_SUFFIX) and not e.name.startswith("."):
                try:
                    size = e.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                files.append((e.name, size))
                total += size
    if total <= max_bytes:
        return None
    target = max_bytes * 9 // 10
    files.sort()
    n = nbytes = 0
    first = last = None
    for name, size in files:
        if total <= target:
            break
        if name in keep:
            continue
        path = os.path.join(directory, name)
        complete, s0, s1 = _file_summary(path, size)
        if not complete:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue  # another runner or the agent got it first
        total -= size
        n += 1
        nbytes += size
        if s0 is not None:
            first = s0 if first is None else min(first, s0)
        if s1 is not None:
            last = s1 if last is None else max(last, s1)
    return (n, nbytes, [first, last]) if n else None


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
    """(records, damage) of one journal file.  Pure except for the read.

    A torn last line (runner killed mid-write) or a bad line is reported in
    ``damage`` (list of str naming the line) and skipped; hashes are verified
    per record (the chain across files is the store's job).
    """
    import json

    with open(path, "rb") as f:
        data = f.read()
    records, damage = [], []
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    for i, line in enumerate(lines, 1):
        last = i == len(lines)
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            what = "torn last line (writer killed mid-record)" if last and torn else f"invalid JSON ({exc})"
            damage.append(f"{path}: line {i}: {what}")
            continue
        if last and torn:
            damage.append(f"{path}: line {i}: no final newline (writer killed mid-record)")
            continue
        if c.record_hash(rec) != rec.get(c.R_HASH):
            damage.append(f"{path}: line {i}: hash mismatch (record altered)")
            continue
        records.append(rec)
    return records, damage
