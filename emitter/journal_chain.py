"""Journal records and their hash chain: the canonical encoding, ``seal``
(a record's ``hash`` and its line) and the chain head (``chain.head``, read and
moved under ``flock``).  docs/journal.md gives the format; emitter/journal.py
is the writer that uses these.

Hot path: stdlib C modules only.  Records are encoded by ``dumps`` below, which
tests prove byte-identical to ``contract.canonical_json`` (importing json
costs ~5 ms, more than a no-op hook script).
"""

import os
import sys

from emitter import contract as c

try:  # the builtin module, not hashlib (which loads OpenSSL: ~2 ms)
    if sys.version_info >= (3, 12):
        from _sha2 import sha256 as _sha256
    else:
        from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - a build without the builtin modules
    from hashlib import sha256 as _sha256


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
