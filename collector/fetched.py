"""Fetched JetStream messages -> one decoded, columnar :class:`Batch`.

Pure: the ack subject carries each message's stream sequence and receive
time (``parse_reply``), the headers its schema version and Nats-Msg-Id;
``build_batch`` decodes every message (``collector.decode``), holds its
Msg-Id to its publisher and content (``collector.identity``), and converts
the rows to Arrow once per batch.
"""

from __future__ import annotations

from collector.columns import Batch, check_rows
from collector.decode import DL_BAD_RECORD, DL_STORE_REJECTED, DeadLetter, decode_message, subject_parts
from collector.dedup import journal_ts
from collector.identity import check_msg_id_decoded as check_msg_id
from emitter import contract as C


def parse_reply(reply: str):
    """(stream_seq, received_ns, num_pending, num_delivered) from a JetStream ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or
    the v2 form with domain and account hash in front.
    """
    t = reply.split(".")
    n = len(t)
    if n == 9:
        return int(t[5]), int(t[7]), int(t[8]), int(t[4])
    if n >= 11:
        return int(t[7]), int(t[9]), int(t[10]), int(t[6])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


def build_batch(msgs, instance: str, keep_raw: bool, max_bytes: int):
    """Decode fetched messages into a :class:`Batch` (+ per-message info).

    A message whose rows the Arrow conversion refuses (wrong field types) is
    isolated and dead-lettered; the rest of the batch goes on.
    """
    items = []
    for m in msgs:
        seq, rns, pending, delivered = parse_reply(m.reply)
        hdrs = m.headers or {}
        res = decode_message(m.data, m.subject, seq, rns, hdrs.get(C.HDR_SCHEMA), max_bytes)
        mid = hdrs.get(C.HDR_MSG_ID)
        if type(res) is not DeadLetter:
            res = check_msg_id(res, mid, m.subject, m.data)
        items.append((res, seq, m.subject, rns, m.data, mid, pending))
    batch = _fill(items, instance, keep_raw)
    try:
        arrow = batch.arrow()
    except Exception:
        for i, it in enumerate(items):
            why = check_rows(it[0])
            if why is not None:
                items[i] = (DeadLetter(DL_BAD_RECORD, why),) + it[1:]
        batch = _fill(items, instance, keep_raw)
        arrow = batch.arrow()
    if "journal" in arrow[1]:  # here, not in the writer thread every batch waits for
        arrow[1]["journal"] = journal_ts(arrow[1]["journal"])
    batch.pending = items[-1][6] if items else 0
    batch.n_journal_errors = sum(getattr(it[0], "n_journal_errors", 0) for it in items)
    return batch, arrow


def _fill(items, instance, keep_raw):
    b = Batch(instance, keep_raw)
    for res, seq, subj, rns, data, mid, _ in items:
        parts = subject_parts(subj)
        b.add(res, seq, subj, rns, data, mid, parts[1] if parts else None)
    return b


def rejected_batch(m, exc, instance: str, keep_raw: bool):
    """A one-message batch dead-lettering ``m``: the store refused its rows."""
    seq, rns, _, _ = parse_reply(m.reply)
    parts = subject_parts(m.subject)
    b = Batch(instance, keep_raw)
    b.add(DeadLetter(DL_STORE_REJECTED, f"{type(exc).__name__}: {exc}"[:500]), seq, m.subject, rns,
          m.data, (m.headers or {}).get(C.HDR_MSG_ID), parts[1] if parts else None)
    b.pending = 0
    return b, b.arrow()
