"""Whole journal files, away from the hook's hot path: evicting the oldest
complete files when the spool is over its bound (``Journal`` calls ``evict``
at most once per ``journal.EVICT_CHECK_S``), and reading one file back
(``read_records``; ``emitter.journal.read_records`` is the public name).
"""

import os

from emitter import contract as c

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
