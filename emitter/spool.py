"""Reading the node journal: which files are ready to ship, in what order,
what is damaged, and deleting a file once JetStream has acked it.

Format: docs/journal.md.  A file is *complete* when its last record is
``hook_ended`` or it has no ``hook_started`` (a standalone file); *abandoned*
when incomplete, its runner is gone and it has not been written to for a few
seconds; otherwise *running* (left alone).  Damage (a torn last line after a
kill -9, an unparseable line, a record whose hash does not match) never stops
the rest of the file from shipping: intact lines go out, and the damage is
described so the agent can report it as a ``journal_error`` record.

A file someone other than root (or the agent's own user) could have written
is *untrusted*: not owned by uid 0 or the euid, writable by group or others,
a symlink, or not a regular file.  Its contents are never read or shipped; the
agent reports it once and sets it aside (docs/agent.md, "Untrusted files").
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import dataclass, field

from emitter import contract as c

COMPLETE = "complete"
ABANDONED = "abandoned"
RUNNING = "running"
UNTRUSTED = "untrusted"  # never shipped; see trust_problem
UNTRUSTED_SUFFIX = ".untrusted"  # where the agent moves a reported untrusted file

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BTIME: int | None = None


@dataclass
class JournalFile:
    path: str
    entries: list = field(default_factory=list)  # [(raw_line, record)] in file order
    damage: list = field(default_factory=list)  # [str] human-readable, one per problem
    state: str = RUNNING
    mtime_ns: int = 0
    size: int = 0
    full: bool = True  # False: scanned lightly (head and tail only); see load_full
    untrusted: str | None = None  # why the file is not evidence (state UNTRUSTED)
    #: uid owning the spool it came from, as the agent stat()ed it (0: root's journal;
    #: emitter/userspool.py).  Shipped as contract.A_ATTESTED_UID, never read from the records.
    attested_uid: int = 0
    spool_ident: tuple | None = None  # (st_dev, st_ino) of that per-uid spool; None: root's journal

    @property
    def records(self) -> list[dict]:
        return [r for _, r in self.entries]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def hook_id(self) -> str | None:
        for _, r in self.entries:
            if r.get(c.R_HOOK_ID):
                return r[c.R_HOOK_ID]
        return None

    @property
    def first_seq(self) -> int | None:
        seqs = [r.get(c.R_SEQ) for r in self.records if isinstance(r.get(c.R_SEQ), int)]
        return min(seqs) if seqs else None

    @property
    def started(self) -> dict | None:
        return next((r for r in self.records if r.get(c.R_KIND) == c.K_HOOK_STARTED), None)

    @property
    def is_standalone(self) -> bool:
        return bool(self.entries) and not any(
            r.get(c.R_KIND) in (c.K_HOOK_STARTED, c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED, c.K_HOOK_ENDED)
            for r in self.records)

    @property
    def message_key(self) -> str:
        """What makes this file's message ID: the hook ID, or for a standalone
        file the hash of its first record (stable across retries)."""
        if not self.is_standalone and self.hook_id:
            return self.hook_id
        first = self.entries[0][1] if self.entries else {}
        return str(first.get(c.R_HASH) or self.name)


def list_files(journal_dir: str) -> list[str]:
    """Journal files in name order (``<ts_ns:020d>-<hook>.jsonl``); temp files
    of ``write_standalone`` and other names are ignored."""
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    return [os.path.join(journal_dir, n) for n in sorted(names)
            if n.endswith(c.JOURNAL_SUFFIX) and not n.startswith(".")]


def parse_lines(data: bytes) -> tuple[list, list]:
    """(entries, damage) from a file's bytes.  Pure."""
    entries, damage = [], []
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        damage.append(f"torn last line ({len(tail)} bytes without newline, "
                      f"after line {len(lines)}): record lost")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = line.decode("utf-8")
            rec = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            damage.append(f"line {n} unreadable ({type(exc).__name__}): record lost")
            continue
        if not isinstance(rec, dict):
            damage.append(f"line {n} is not a JSON object: record lost")
            continue
        if rec.get(c.R_HASH) != c.record_hash(rec):
            # Kept and shipped as written: the store's chain verifier shows it.
            damage.append(f"line {n} (seq {rec.get(c.R_SEQ)}) hash does not match its content")
        entries.append((raw, rec))
    return entries, damage


def _boot_time() -> int:
    global _BTIME
    if _BTIME is None:
        _BTIME = 0
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        _BTIME = int(line.split()[1])
                        break
        except OSError:
            pass
    return _BTIME


def runner_alive(pid, started_ts_ns: int | None = None) -> bool:
    """Is the runner that wrote the file still running?

    A reused PID is caught by comparing the process start time (from
    /proc/<pid>/stat) with the file's first timestamp: the runner started
    before it wrote its first record.  Without /proc: plain liveness.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if started_ts_ns is None:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        start_ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        bt = _boot_time()
        if not bt:
            return True
        start_s = bt + start_ticks / _CLK_TCK
        # btime has 1 s resolution: allow 2 s of slack.
        return start_s <= started_ts_ns / 1e9 + 2.0
    except (OSError, ValueError, IndexError):
        return True


def classify(jf: JournalFile, *, now_ns: int | None = None, grace_s: float = 5.0,
             stale_s: float = 6 * 3600) -> str:
    """COMPLETE, ABANDONED or RUNNING (see module doc)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    age_s = (now_ns - jf.mtime_ns) / 1e9
    recs = jf.records
    if not recs:
        # Empty or wholly torn: a runner that died before its first write, or
        # one that is writing right now.  Only give up on it after a while.
        return ABANDONED if age_s > max(grace_s, 60.0) else RUNNING
    if recs[-1].get(c.R_KIND) == c.K_HOOK_ENDED or jf.is_standalone:
        return COMPLETE
    if age_s > stale_s:
        return ABANDONED  # e.g. the runner's PID namespace is not visible here
    if age_s < grace_s:
        return RUNNING
    first = recs[0]
    if runner_alive(first.get(c.R_PID), first.get(c.R_TS)):
        return RUNNING
    return ABANDONED


def _head_and_tail(data: bytes) -> tuple[list, list]:
    """Light parse for scanning: the records up to hook_started and the last
    complete record (what classification and ordering need), without hash
    checks.  The full parse happens when the file is shipped (``load``)."""
    lines = data.split(b"\n")
    lines.pop()  # torn tail or b""
    picked = []
    for line in lines[:3]:
        picked.append(line)
        if b'"kind":"hook_started"' in line:
            break
    if lines and (not picked or lines[-1] is not picked[-1]) and len(lines) > len(picked):
        picked.append(lines[-1])
    entries = []
    for line in picked:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            entries.append((line.decode("utf-8", "replace"), rec))
    return entries, []


def trust_problem(st: os.stat_result, euid: int | None = None, owner: int | None = None) -> str | None:
    """Why a journal file with these stats is not evidence, or None.  Pure.

    The runner writes its files 0600 as root (or as the agent's user on a
    non-root test setup); anything else could have been written by a user.
    ``owner``: a per-uid spool's uid, the only owner its files may have."""
    euid = os.geteuid() if euid is None else euid
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    problems = []
    if owner:
        if st.st_uid != owner:
            problems.append(f"is owned by uid {st.st_uid}, not uid {owner} whose spool it is in")
    elif st.st_uid not in (0, euid):
        problems.append(f"is owned by uid {st.st_uid}, not root" + (f" or uid {euid}" if euid else ""))
    if mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)
        problems.append(f"has mode {mode:04o} (writable by {who})")
    return " and ".join(problems) or None


def _untrusted(path: str, st: os.stat_result, why: str) -> JournalFile:
    return JournalFile(path=path, state=UNTRUSTED, untrusted=why, mtime_ns=st.st_mtime_ns,
                       size=st.st_size, full=True)


def read_file(path: str, full: bool = True, owner: int = 0, **classify_kw) -> JournalFile | None:
    """Read and classify one file; None if it vanished (shipped by another process).
    ``full=False``: a light read for scanning (see _head_and_tail); call
    ``load_full`` before shipping it.  An untrusted file (trust_problem) comes
    back in state UNTRUSTED with no entries: its contents are not read.
    ``owner``: the uid of the per-uid spool it is in (0: root's journal)."""
    try:
        # O_NOFOLLOW: a symlink is refused, not followed; O_NONBLOCK: a FIFO
        # planted here must not block the open (it is refused by its fstat).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        try:
            jf = _untrusted(path, os.lstat(path), "is a symlink")
            jf.attested_uid = owner
            return jf
        except FileNotFoundError:
            return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # of what was opened: no race with a swap of the name
        why = trust_problem(st, owner=owner)
        if why:
            jf = _untrusted(path, st, why)
            jf.attested_uid = owner
            return jf
        data = f.read()
    entries, damage = parse_lines(data) if full else _head_and_tail(data)
    jf = JournalFile(path=path, entries=entries, damage=damage, mtime_ns=st.st_mtime_ns,
                     size=st.st_size, full=full, attested_uid=owner)
    jf.state = classify(jf, **classify_kw)
    if jf.state == RUNNING:
        # A running file's last line may simply not be written yet.
        jf.damage = [d for d in jf.damage if not d.startswith("torn last line")]
    return jf


def load_full(jf: JournalFile) -> JournalFile | None:
    """The fully parsed (hash-checked) version of a lightly scanned file,
    keeping its state; None if it vanished meanwhile."""
    if jf.full:
        return jf
    try:
        fd = os.open(jf.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        jf.state, jf.untrusted, jf.entries = UNTRUSTED, "is a symlink", []
        return jf
    with os.fdopen(fd, "rb") as f:
        why = trust_problem(os.fstat(f.fileno()), owner=jf.attested_uid)
        if why:  # replaced since the scan
            jf.state, jf.untrusted, jf.entries = UNTRUSTED, why, []
            return jf
        data = f.read()
    jf.entries, jf.damage = parse_lines(data)
    jf.full = True
    return jf


def scan(journal_dir: str, full: bool = True, owner: int = 0, **classify_kw) -> list[JournalFile]:
    """Every journal file, classified, in shipping order: by first seq (the
    node's chain order), files without a readable seq by name.  ``full=False``
    keeps memory flat on a big backlog (see read_file).  ``owner``: the uid of
    a per-uid spool (emitter/userspool.py), 0 for root's journal."""
    files = [jf for jf in (read_file(p, full, owner, **classify_kw) for p in list_files(journal_dir)) if jf]
    big = 1 << 62
    return sorted(files, key=lambda jf: (jf.first_seq if jf.first_seq is not None else big, jf.name))


def ready(files: list[JournalFile]) -> list[JournalFile]:
    """Files the agent may ship now, in order (never an UNTRUSTED one)."""
    return [jf for jf in files if jf.state in (COMPLETE, ABANDONED)]


def untrusted_record(jf: JournalFile, kept_as: str | None) -> dict:
    """The ``journal_error`` body reporting an untrusted file (for
    ``journal.write_standalone``): names the file, why, and what to do."""
    where = (f"it is kept, unread, as {kept_as}" if kept_as
             else "it is left in place, unread")
    reason = (f"untrusted journal file {jf.path}: it {jf.untrusted}, so a non-root user could have "
              f"written it (possible forgery); it was not shipped as evidence and {where}. Find out who "
              "wrote it, then remove it, and keep the journal directory root-owned 0700")
    return {c.R_KIND: c.K_JOURNAL_ERROR, c.R_PATH: jf.path, c.R_REASON: reason}


def aside_path(path: str) -> str:
    """Where ``set_aside`` moves ``path``: ``<name>.untrusted``, or a numbered
    variant when that exists (an earlier file's evidence is never overwritten)."""
    for n in range(1000):
        dest = path + (f".{n}" if n else "") + UNTRUSTED_SUFFIX
        if not os.path.lexists(dest):
            return dest
    return path + f".{time.time_ns()}" + UNTRUSTED_SUFFIX


def set_aside(path: str, dest: str) -> bool:
    """Move a reported untrusted file to ``dest`` (from aside_path) so no scan
    sees it again, across agent restarts; its bytes, owner and mode are kept.
    False when it could not be moved (gone, read-only spool)."""
    try:
        os.rename(path, dest)
        return True
    except OSError:
        return False


def remove(path: str, spool_ident: tuple | None = None) -> bool:
    """Delete a shipped file (after its PubAck); False if already gone.

    ``spool_ident``: (st_dev, st_ino) of the per-uid spool it was read from
    (emitter/userspool.py): the name is unlinked through a descriptor of that
    very directory, so a spool its user swapped for a symlink since is left
    alone (False) instead of deleting a same-named file elsewhere."""
    if spool_ident is not None:
        try:
            dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(dfd)
            if (st.st_dev, st.st_ino) != tuple(spool_ident):
                return False
            os.unlink(os.path.basename(path), dir_fd=dfd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def spool_bytes(journal_dir: str) -> int:
    total = 0
    for p in list_files(journal_dir):
        try:
            total += os.stat(p).st_size
        except FileNotFoundError:
            pass
    return total


def damage_records(jf: JournalFile) -> list[dict]:
    """``journal_error`` record bodies (for ``journal.write_standalone``) describing
    ``jf``'s damage; the writer fills v/seq/prev/hash/ts/node/cluster."""
    return [{c.R_KIND: c.K_JOURNAL_ERROR, c.R_PATH: jf.path, c.R_REASON: d} for d in jf.damage]
