"""``audit verify``, third step: the store against the chain heads nodes signed.

The hash chain proves order and content *inside* what the store holds, but
not what is missing at its end or a chain re-hashed from some record on: the
last record has no successor to betray its deletion, and whoever can write
the store can re-hash every later record.  Nodes therefore publish their
chain head (cluster, node, chain, seq, hash, time) periodically and when the
agent stops, signed with the node's NKey (ed25519) when it has one; the
collector keeps them in the ``chain_heads`` table.

For each (cluster, node, chain) the newest head whose signature holds is
compared with the store:

* ``tail_missing``: the store ends before the head's position (records
  deleted from the end; or dead-lettered at ingest; or not committed yet if
  the collector is behind: a head covers only records the agent shipped);
* ``rewritten``: the record at the head's position hashes to something else
  (a consistent rewrite of the chain, or an altered record);
* ``chain_missing``: the store holds no record of a chain the node signed
  (the chain was deleted or replaced by another);
* ``bad_signature``: a head's signature does not verify with its key (a
  forged or edited head row);
* ``untrusted_key``: a head is unsigned or signed by another key than the
  node's pinned one (``keys``: node -> nkey public key).

A head row can be deleted by whoever can write the store: heads prove what
they cover, and an older head still covers everything up to its position.
"""

from __future__ import annotations

import base64
import binascii
import re

import duckdb

from emitter import contract as C
from queries import QueryError
from queries.verify_rows import groups, load, problem

#: The table and its columns (some spelled two ways: the first found is used).
TABLE = "chain_heads"
_ALIASES = {"ts": ("ts", "time", "head_ts"), "signature": ("signature", "sig"),
            "public_key": ("public_key", "pubkey", "nkey")}


def head_payload(cluster, node, chain, seq, hash_, ts_ns) -> bytes:
    """The bytes a node signs for one chain head: canonical JSON of its fields."""
    fn = getattr(C, "chain_head_payload", None)
    if fn is not None:  # the contract's own definition, once it has one
        return fn(cluster, node, chain, seq, hash_, ts_ns)
    return C.canonical_json({"cluster": cluster, "node": node, "chain": chain, "seq": int(seq),
                             "hash": hash_, "ts": int(ts_ns)}).encode("utf-8")


def _raw_public_key(key: str) -> bytes:
    """The 32 ed25519 bytes of an nkey public key ("U..."); ValueError if malformed."""
    import nkeys

    try:
        raw = base64.b32decode(key.strip())
    except (binascii.Error, AttributeError) as exc:
        raise ValueError(f"not a base32 nkey ({exc})") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0] & 0xF8):
        raise ValueError("not an nkey public key")
    if nkeys.crc16(bytearray(raw[:33])) != int.from_bytes(raw[33:], "little"):
        raise ValueError("checksum mismatch")
    return raw[1:33]


def _sig_bytes(sig) -> bytes:
    if isinstance(sig, (bytes, bytearray, memoryview)):
        return bytes(sig)
    s = str(sig).strip()
    for dec in (base64.urlsafe_b64decode, base64.b64decode, bytes.fromhex):
        try:
            out = dec(s + "=" * (-len(s) % 4)) if dec is not bytes.fromhex else dec(s)
        except (binascii.Error, ValueError):
            continue
        if len(out) == 64:
            return out
    raise ValueError("not a 64-byte ed25519 signature (base64 or hex)")


def signature_ok(public_key: str, signature, payload: bytes) -> bool:
    """Whether ``signature`` over ``payload`` verifies with the nkey ``public_key``."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(_raw_public_key(public_key)).verify(payload, _sig_bytes(signature))
        return True
    except (ValueError, BadSignatureError, TypeError):
        return False


def _columns(con) -> dict | None:
    """{logical name: column} of the heads table, or None when the source has none."""
    try:
        have = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {TABLE}").fetchall()]
    except duckdb.Error:
        return None
    cols = {c: c for c in ("cluster", "node", "chain", "seq", "hash") if c in have}
    for name, spellings in _ALIASES.items():
        cols[name] = next((s for s in spellings if s in have), None)
    if len(cols) < 8 or cols["ts"] is None:
        return None
    return cols


def check_heads(con, node, problems, info, ends, keys=None) -> dict:
    """Compare each chain's newest valid head with the store (``ends``:
    (cluster, node, chain) -> (last seq, its hash) from the chain walk).
    Returns counts for ``checked``."""
    cols = _columns(con)
    if cols is None:
        _unattested(info, ends, set(), 0)
        return {"heads": 0, "signed_heads": 0}
    sel = ", ".join(f"{cols[c]}" if cols[c] else f"NULL AS {c}" for c in
                    ("cluster", "node", "chain", "seq", "hash", "ts", "signature", "public_key"))
    nf, params = (f" WHERE {cols['node']} = ?", [str(node)]) if node else ("", [])
    # Epoch ns of a TIMESTAMPTZ (or an integer ns column) for the payload.
    # Only the newest heads of each chain are read: a node publishing for
    # years leaves millions, and the newest one that verifies is what counts.
    cur = con.execute(f"SELECT cluster || chr(0) || node || chr(0) || chain AS k, * FROM (SELECT {sel} "
                      f"FROM {TABLE}{nf}) QUALIFY row_number() OVER (PARTITION BY cluster, node, chain "
                      f"ORDER BY seq DESC, ts DESC) <= {HEADS_PER_CHAIN} "
                      f"ORDER BY cluster, node, chain, seq DESC, ts DESC", params)
    seen, n_chains, n_signed = set(), 0, 0
    for _, rows in groups(cur, 2_000):
        n_chains += 1
        head, signed = _newest_valid(problems, rows, keys)
        n_signed += signed
        if head is not None:
            _against_store(con, problems, head, ends)
        seen.add(tuple(rows[0][1:4]))
    _unattested(info, ends, seen, n_chains)
    return {"heads": n_chains, "signed_heads": n_signed}


#: Newest heads read per chain (each one that fails its signature is a finding).
HEADS_PER_CHAIN = 100


def _ts_ns(ts) -> int | None:
    if ts is None or type(ts) is int:
        return ts
    from datetime import datetime, timezone

    if isinstance(ts, datetime):
        d = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (d.days * 86_400 + d.seconds) * 10**9 + d.microseconds * 1000
    return None


def _newest_valid(problems, rows, keys):
    """The newest head of one chain whose signature holds (each one that does
    not is reported); (head or None, 1 if it is signed)."""
    for _, cluster, nd, chain, seq, h, ts, sig, pub in rows:
        pinned = pinned_key(keys, nd)
        where = f"chain head of chain {chain or '(none)'} at position {seq}"
        if sig is None or sig == "" or sig == b"":
            if pinned:
                problem(problems, cluster, nd, seq, "untrusted_key",
                        f"the {where} is unsigned, but {nd}'s heads must be signed by {pinned[:12]}…", chain)
                continue
            return (cluster, nd, chain, seq, h, ts, False), 0
        if pinned and pub and pub != pinned:
            problem(problems, cluster, nd, seq, "untrusted_key",
                    f"the {where} is signed by {str(pub)[:12]}…, not by {nd}'s key {pinned[:12]}…", chain)
            continue
        payload = head_payload(cluster, nd, chain, seq, h, _ts_ns(ts) or 0)
        if not signature_ok(pinned or str(pub or ""), sig, payload):
            problem(problems, cluster, nd, seq, "bad_signature",
                    f"the {where} does not verify with key {str(pinned or pub)[:12]}…: the head row was "
                    f"forged or edited", chain)
            continue
        return (cluster, nd, chain, seq, h, ts, True), 1
    return None, 0


def _against_store(con, problems, head, ends):
    cluster, nd, chain, seq, h, ts, signed = head
    when = f"{ts}".replace("+00:00", "Z")
    who = f"the {'signed' if signed else 'unsigned'} head {nd} published at {when}"
    end = ends.get((cluster, nd, chain))
    if end is None:
        others = sorted(ch or "(none)" for (cl, n, ch) in ends if cl == cluster and n == nd)
        instead = f"; it holds chain(s) {', '.join(others)} instead (replaced)" if others else ""
        problem(problems, cluster, nd, seq, "chain_missing",
                f"{who} covers chain {chain or '(none)'} up to position {seq}, but the store holds no "
                f"record of that chain{instead}", chain)
        return
    if end[0] < seq:
        problem(problems, cluster, nd, end[0] + 1, "tail_missing",
                f"{who} says the chain reaches position {seq} (hash {str(h)[:12]}), but the store ends "
                f"at position {end[0]}: record(s) {end[0] + 1}..{seq} were deleted (or dead-lettered at "
                f"ingest, see dead_letters; or not committed yet, if the collector is behind)", chain)
        return
    row = con.execute("SELECT record FROM journal WHERE cluster = ? AND node = ? AND chain = ? AND seq = ?",
                      [cluster, nd, chain, seq]).fetchone()
    rec = load(row[0]) if row else None
    if rec is None:
        return  # a gap or an unreadable record: the walk reported it
    actual = C.record_hash(rec)
    if actual != h:
        problem(problems, cluster, nd, seq, "rewritten",
                f"{who} says position {seq} hashes to {str(h)[:12]}, but the store's record there hashes "
                f"to {actual[:12]}: the chain was rewritten up to here (or this record altered)", chain)


#: Nodes listed one by one under ``unattested`` (an upgrade leaves every old
#: chain without a head: one summary line for the rest).
MAX_UNATTESTED_LISTED = 20


def _unattested(info, ends, seen, n_chains):
    """Chains no head covers: their tail and a consistent rewrite of them
    cannot be told (one info line per node)."""
    if not n_chains:
        if ends:
            info.append({"cluster": None, "node": None, "chain": None, "seq": None, "kind": "unattested",
                         "detail": "the store holds no chain heads: a deleted chain tail or a consistent "
                                   "rewrite of a chain cannot be detected (nodes publish signed heads "
                                   "from their agent; see docs/security.md)"})
        return
    by_node: dict = {}
    for (cluster, nd, chain) in ends:
        if (cluster, nd, chain) not in seen:
            by_node.setdefault((cluster, nd), []).append(chain or "(none)")
    items = sorted(by_node.items())
    for (cluster, nd), chains in items[:MAX_UNATTESTED_LISTED]:
        info.append({"cluster": cluster, "node": nd, "chain": None, "seq": None, "kind": "unattested",
                     "detail": f"no chain head in the store covers "
                               f"chain(s) {', '.join(sorted(chains))}: a deleted tail or a consistent "
                               f"rewrite of them cannot be detected"})
    if len(items) > MAX_UNATTESTED_LISTED:
        rest = items[MAX_UNATTESTED_LISTED:]
        info.append({"cluster": None, "node": None, "chain": None, "seq": None, "kind": "unattested",
                     "detail": f"and {sum(len(c) for _, c in rest)} chain(s) on {len(rest)} more node(s) "
                               f"(from {rest[0][0][1]} to {rest[-1][0][1]}) no head covers"})


class KeysError(QueryError):
    """The pinned-keys file cannot be read."""


_AUTH_USER = re.compile(r'\{nkey:\s*"(?P<key>[A-Z2-7]+)",\s*permissions:\s*(?P<perm>\{.*\})\}\s*$')


def load_keys(path) -> dict:
    """node -> nkey public key, from a JSON object ``{"node001": "U..."}`` or
    from the ``auth.conf`` that deploy/nats/gen_auth.py writes (each node's
    key is the one allowed to publish on its own spans subject).  Keys are
    looked up by node name and by its subject token."""
    import json

    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise KeysError(f"cannot read the node keys file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    prefix = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_SPANS}."
    keys = {}
    for line in text.splitlines():
        m = _AUTH_USER.search(line.strip())
        if not m:
            continue
        try:
            allow = json.loads(m.group("perm")).get("publish", {}).get("allow", [])
        except (ValueError, AttributeError):
            continue
        for subj in allow if isinstance(allow, list) else []:
            if isinstance(subj, str) and subj.startswith(prefix) and subj.count(".") == 3:
                keys[subj.rsplit(".", 1)[1]] = m.group("key")
    if not keys:
        raise KeysError(f"{path} holds no node keys: give a JSON object {{\"node\": \"U...\"}} or the "
                        f"auth.conf written by deploy/nats/gen_auth.py (mode nkey)")
    return keys


def pinned_key(keys, node):
    if not keys:
        return None
    return keys.get(node) or keys.get(C.subject_token(node))
