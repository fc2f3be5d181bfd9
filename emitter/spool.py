"""Reading the node journal: which files are ready to ship, in what order,
what is damaged, and deleting a file once JetStream has acked it.

Format: docs/journal.md.  A file is *complete* when its last record is
``hook_ended`` or it has no ``hook_started`` (a standalone file); *abandoned*
when incomplete, its runner is gone and it has not been written to for a few
seconds; otherwise *running* (left alone).  Damage (a torn last line after a
kill -9, an unparseable line, a record whose hash does not match) never stops
the rest of the file from shipping: intact lines go out, and the damage is
described so the agent can report it as a ``journal_error`` record.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from emitter import contract as c

COMPLETE = "complete"
ABANDONED = "abandoned"
RUNNING = "running"

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


def read_file(path: str, full: bool = True, **classify_kw) -> JournalFile | None:
    """Read and classify one file; None if it vanished (shipped by another process).
    ``full=False``: a light read for scanning (see _head_and_tail); call
    ``load_full`` before shipping it."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    entries, damage = parse_lines(data) if full else _head_and_tail(data)
    jf = JournalFile(path=path, entries=entries, damage=damage, mtime_ns=st.st_mtime_ns,
                     size=st.st_size, full=full)
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
        with open(jf.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    jf.entries, jf.damage = parse_lines(data)
    jf.full = True
    return jf


def scan(journal_dir: str, full: bool = True, **classify_kw) -> list[JournalFile]:
    """Every journal file, classified, in shipping order: by first seq (the
    node's chain order), files without a readable seq by name.  ``full=False``
    keeps memory flat on a big backlog (see read_file)."""
    files = [jf for jf in (read_file(p, full, **classify_kw) for p in list_files(journal_dir)) if jf]
    big = 1 << 62
    return sorted(files, key=lambda jf: (jf.first_seq if jf.first_seq is not None else big, jf.name))


def ready(files: list[JournalFile]) -> list[JournalFile]:
    """Files the agent may ship now, in order."""
    return [jf for jf in files if jf.state in (COMPLETE, ABANDONED)]


def remove(path: str) -> bool:
    """Delete a shipped file (after its PubAck); False if already gone."""
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
