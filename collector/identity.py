"""Identity comes from credentials, never from payloads (docs/security.md).

With per-node credentials (deploy/nats/gen_auth.py) a node may publish only
on ``hookscope.<signal>.<cluster>.<node>`` for its own cluster and node, so
the *subject* is what the server vouches for.  Everything inside the message
(the journal records' ``node``/``cluster``, a metrics resource's
``host.name``) is the node's claim.  These pure checks hold the claim to the
subject: a message whose rows would be stored under another node or cluster
is dead-lettered (``identity_mismatch``), kept as evidence, never stored.

Names are compared as subject tokens (``contract.subject_token``): that is
all the subject can carry, so two nodes whose names differ only in characters
outside ``[A-Za-z0-9_-]`` share a token and must not share a cluster.

The ``Nats-Msg-Id`` is checked the same way: the stream deduplicates on it
alone, so an ID naming another node, or a content digest that is not this
message's content, is a forgery (an attempt to pre-empt another node's
message) and dead-letters the message.
"""

from __future__ import annotations

import hashlib

from emitter import contract as C

_HEX = frozenset("0123456789abcdef")


def _tokens(subject: str):
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != C.SUBJECT_PREFIX:
        return None
    return parts[1], parts[2], parts[3]


def check_rows(subject: str, pairs) -> str | None:
    """None when every (cluster, node) in ``pairs`` is the subject's, else why not."""
    t = _tokens(subject)
    if t is None:
        return None  # not ours: decode says so
    _, cl_tok, node_tok = t
    tok = C.subject_token
    for cl, node in pairs:
        if tok(node) != node_tok or tok(cl) != cl_tok:
            return (f"records claim node {str(node)[:64]!r} of cluster {str(cl)[:64]!r}, but were "
                    f"published on {subject} (the credentials of node {node_tok!r} of cluster "
                    f"{cl_tok!r}); not stored")
    return None


#: tables whose rows start with (cluster, node): every other table's rows derive from them
_IDENTITY_TABLES = ("journal", "gpu_samples", "chain_heads")


def check_decoded(subject: str, dec) -> str | None:
    """check_rows over every (cluster, node) a decoded message would store."""
    rows = dec.rows
    pairs = set()
    for t in _IDENTITY_TABLES:
        if t in rows:
            pairs.update([(r[0], r[1]) for r in rows[t]])
    return check_rows(subject, pairs)


def is_digest(key: str) -> bool:
    return len(key) == 64 and _HEX.issuperset(key)


def check_msg_id(msg_id: str | None, subject: str, digest) -> str | None:
    """None when ``msg_id`` is this node's and (new form) names this content.

    ``digest`` is the message's content digest (``contract.records_digest`` of
    its journal lines for spans, sha256 of the payload for metrics), or a
    zero-argument callable computing it (only called for a content-keyed ID).
    IDs of older agents (``<cluster>.<node>.<signal>.<hook id or ts>``) keep
    only the node check.  No ID: nothing to pre-empt with.
    """
    if msg_id is None:
        return None
    t = _tokens(subject)
    if t is None:
        return None
    signal, cl_tok, node_tok = t
    parts = msg_id.split(".", 3)
    if len(parts) != 4 or parts[0] != cl_tok or parts[1] != node_tok or parts[2] != signal:
        return (f"Nats-Msg-Id {msg_id[:120]!r} does not name this publisher "
                f"({cl_tok}.{node_tok}.{signal}.*) on {subject}: an attempt to pre-empt another "
                "node's message ID; not stored")
    key = parts[3]
    if is_digest(key):
        want = digest() if callable(digest) else digest
        if want is not None and key != want:
            return (f"Nats-Msg-Id {msg_id[:120]!r} names content {key[:16]}..., but this message's "
                    f"content digest is {str(want)[:16]}...; not stored")
    return None


def payload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_msg_id_decoded(dec, msg_id, subject, payload):
    """The decoded message, or a DeadLetter(identity_mismatch) when its
    Nats-Msg-Id is not its publisher's and its content's."""
    from collector.decoded import DL_IDENTITY, DeadLetter

    digest = dec.records_digest
    why = check_msg_id(msg_id, subject, digest if digest is not None else (lambda: payload_digest(payload)))
    return dec if why is None else DeadLetter(DL_IDENTITY, why)
