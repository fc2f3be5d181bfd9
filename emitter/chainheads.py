"""Signed chain heads: what a node vouches for, outside the store's reach.

The hash chain proves order and content inside what the store holds, but a
deleted tail, or a chain consistently re-hashed from some record on, leaves
no trace in the chain itself.  So the agent publishes, for each chain it has
shipped records of, its *head*: the last shipped record's (cluster, node,
chain, seq, hash) and the time, signed with the node's NKey (ed25519) when it
has one.  It does so every ``head_interval_s`` when a head moved, and when it
stops.  The collector stores them in ``chain_heads`` (docs/collector.md);
``audit verify`` holds the store's last record of each chain to the newest
head whose signature holds.

Wire format (subject ``hookscope.heads.<cluster>.<node>``, content type
``contract.CONTENT_TYPE_HEADS``): canonical JSON
``{"v": 1, "heads": [{"cluster", "node", "chain", "seq", "hash", "ts",
"sig", "key"}]}``; ``sig`` is the base64url (unpadded) ed25519 signature of
``contract.chain_head_payload(cluster, node, chain, seq, hash, ts)`` and
``key`` the NKey public key ("U..."), both null when the node has no NKey.
``Nats-Msg-Id`` is ``<cluster>.<node>.heads.<sha256 of the payload>``.
"""

from __future__ import annotations

import base64
import hashlib
import time

from emitter import contract as c

HEADS_VERSION = 1


class HeadTracker:
    """The newest shipped record per chain, and which heads moved since the
    last publication.  Fed with the records of every acked journal file."""

    def __init__(self):
        self.heads: dict[str, dict] = {}  # chain -> {cluster, node, chain, seq, hash}
        self._dirty: set[str] = set()

    def observe(self, records) -> None:
        for r in records:
            chain, seq, h = r.get(c.R_CHAIN, ""), r.get(c.R_SEQ), r.get(c.R_HASH)
            if type(seq) is not int or type(h) is not str or type(chain) is not str:
                continue
            cur = self.heads.get(chain)
            if cur is None or seq > cur["seq"]:
                self.heads[chain] = {"cluster": str(r.get(c.R_CLUSTER) or ""), "node": str(r.get(c.R_NODE) or ""),
                                     "chain": chain, "seq": seq, "hash": h}
                self._dirty.add(chain)

    def pending(self, all_heads: bool = False) -> list[dict]:
        chains = self.heads if all_heads else self._dirty
        return [dict(self.heads[ch]) for ch in sorted(chains) if ch in self.heads]

    def published(self, heads) -> None:
        for h in heads:
            cur = self.heads.get(h["chain"])
            if cur is not None and cur["seq"] == h["seq"]:
                self._dirty.discard(h["chain"])


def load_signer(nkey_path: str | None = None, creds_path: str | None = None):
    """An ``nkeys`` KeyPair from the node's NKey seed file (or the seed in a
    .creds file), or None when it has neither (heads then go unsigned)."""
    seed = None
    if nkey_path:
        with open(nkey_path) as f:
            seed = f.read().strip()
    elif creds_path:
        import re

        with open(creds_path) as f:
            blocks = re.findall(r"-----BEGIN [^-]+-----\s*(.+?)\s*------END", f.read(), re.S)
        seed = blocks[1].strip() if len(blocks) >= 2 else None
    if not seed:
        return None
    import nkeys

    return nkeys.from_seed(seed.encode())


def sign(head: dict, signer) -> dict:
    """``head`` with ts (whole microseconds, in ns), sig and key filled."""
    out = dict(head)
    out.setdefault("ts", time.time_ns() // 1000 * 1000)
    out["ts"] = int(out["ts"]) // 1000 * 1000  # the store keeps microseconds: sign what it keeps
    if signer is None:
        out["sig"] = out["key"] = None
        return out
    payload = c.chain_head_payload(out["cluster"], out["node"], out["chain"], out["seq"], out["hash"], out["ts"])
    out["sig"] = base64.urlsafe_b64encode(bytes(signer.sign(payload))).decode("ascii").rstrip("=")
    out["key"] = signer.public_key.decode("ascii")
    return out


def encode(heads: list[dict]) -> bytes:
    return c.canonical_json({"v": HEADS_VERSION, "heads": heads}).encode("utf-8")


def message(heads: list[dict], cluster: str, node: str) -> tuple[str, bytes, str]:
    """(subject, payload, Nats-Msg-Id) of one publication."""
    data = encode(heads)
    return (c.subject(c.SIGNAL_HEADS, cluster, node), data,
            c.message_id(cluster, node, c.SIGNAL_HEADS, hashlib.sha256(data).hexdigest()))


def publish(publisher, tracker: HeadTracker, signer, timeout: float, all_heads: bool = False,
            log=None) -> int:
    """Sign and publish the heads that moved (``all_heads``: every one), one
    message per (cluster, node) of the records, on that identity's subject
    (the one its spans went to); returns how many were acked.  Never raises:
    heads are evidence, and the next publication covers what a failed one did."""
    groups: dict = {}
    for h in tracker.pending(all_heads):
        groups.setdefault((h["cluster"], h["node"]), []).append(h)
    n = 0
    for (cluster, node), heads in sorted(groups.items()):
        signed = [sign(h, signer) for h in heads]
        subject, data, mid = message(signed, cluster, node)
        try:
            publisher.publish(subject, data, mid, c.CONTENT_TYPE_HEADS, timeout)
        except Exception as exc:  # noqa: BLE001
            if log is not None:
                log(f"chain heads not published on {subject} ({type(exc).__name__}: {exc}); retried with "
                    "the next ones (with per-node credentials, the node needs publish permission on "
                    "that subject: re-run deploy/nats/gen_auth.py; the stream needs the subject: the "
                    "collector adds it at start)")
            continue
        tracker.published(heads)
        n += len(heads)
    return n


def verify(head: dict) -> bool:
    """Whether a signed head's signature holds for its own key (collector side)."""
    from nacl.signing import VerifyKey

    try:
        key = str(head["key"])
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
        if len(raw) != 35 or key[0] != "U":
            return False
        sig = str(head["sig"])
        sig_raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        payload = c.chain_head_payload(head["cluster"], head["node"], head["chain"], head["seq"],
                                       head["hash"], head["ts"])
        VerifyKey(raw[1:33]).verify(payload, sig_raw)
        return True
    except Exception:  # noqa: BLE001 - any malformed field or a bad signature: not verified
        return False
