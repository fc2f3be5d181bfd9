"""PURE decoding of a chain-heads message (emitter.chainheads) -> ``chain_heads`` rows.

A head's signature is checked here, at ingest: a head whose signature does
not verify with the key it names is refused (the message is dead-lettered
as ``bad_record``), so the table holds only heads some key really signed.
*Whose* key it must be is the auditor's pin (``audit verify --keys``): the
collector cannot see which NKey the publisher logged in with; what it does
enforce is the subject (collector.identity): a head naming another node or
cluster is ``identity_mismatch``.
"""

from __future__ import annotations

import json

from emitter import chainheads

_FIELDS = ("cluster", "node", "chain", "seq", "hash", "ts")


class HeadsError(ValueError):
    """The payload is not a valid heads message (the detail says why)."""


def decode(payload: bytes, lo: int, hi: int, received_ns: int, stream_seq: int):
    """A ``decode.Decoded`` holding the ``chain_heads`` rows; raises HeadsError."""
    from collector.decoded import Decoded

    rows = rows_of(payload, lo, hi, received_ns, stream_seq)
    dec = Decoded(n_spans=0, cluster=rows[0][0])
    dec.rows["chain_heads"] = rows
    return dec


def rows_of(payload: bytes, lo: int, hi: int, received_ns: int, stream_seq: int) -> list[tuple]:
    """``chain_heads`` rows in schema column order; raises HeadsError."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise HeadsError(f"chain heads: not JSON ({exc})") from None
    if type(doc) is not dict or type(doc.get("heads")) is not list:
        raise HeadsError("chain heads: expected {\"v\": 1, \"heads\": [...]}")
    if doc.get("v") != chainheads.HEADS_VERSION:
        raise HeadsError(f"chain heads: version {doc.get('v')!r} is not {chainheads.HEADS_VERSION}")
    rows = []
    for i, h in enumerate(doc["heads"]):
        if type(h) is not dict:
            raise HeadsError(f"chain heads: head {i} is not an object")
        for f in _FIELDS:
            want = int if f in ("seq", "ts") else str
            if type(h.get(f)) is not want:
                raise HeadsError(f"chain heads: head {i} field {f!r} is not a {want.__name__}")
        if h["seq"] < 0 or not lo <= h["ts"] <= hi:
            raise HeadsError(f"chain heads: head {i} has seq {h['seq']} / ts {h['ts']} out of range")
        sig, key = h.get("sig"), h.get("key")
        if (sig is None) != (key is None):
            raise HeadsError(f"chain heads: head {i} has a signature without a key or the reverse")
        if sig is not None and not chainheads.verify(h):
            raise HeadsError(f"chain heads: head {i} (chain {h['chain'][:16]}, seq {h['seq']}) has a "
                             f"signature that does not verify with key {str(key)[:12]}...")
        rows.append((h["cluster"], h["node"], h["chain"], h["seq"], h["hash"], h["ts"], sig, key,
                     received_ns, stream_seq))
    if not rows:
        raise HeadsError("chain heads: no heads")
    return rows
