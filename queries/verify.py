"""``audit verify``: tamper evidence from the per-node hash chain.

Each node's journal records carry ``seq`` (+1 per record), ``prev`` (the hash
of record seq-1) and ``hash`` (``contract.record_hash``).  The store keeps every
record verbatim in ``journal.record``.  Verification runs in three steps:

1. the chain walk (this module): recompute each record's hash, walk every
   (cluster, node, chain) chain in position order, check positions and links;
2. the derived rows (``verify_rows``): recompute every hook_runs,
   script_runs and node_events column from the records and compare, and
   check that every record still has its row;
3. the signed chain heads (``verify_heads``): the latest head each node
   published per chain against the store (a deleted tail, a replaced chain,
   a consistent rewrite), and its ed25519 signature.

A node has one chain until its journal is re-created (spool wiped, chain.head
lost or corrupt): the runner then starts a new chain (new ``chain`` id, seq 1,
genesis ``prev``).  A node's chains are taken in the order of their first
record's ``ts``; every chain after the first is a ``reset`` at its first
position, unless it links on from the previous chain's last record (a head
written before chain ids were upgraded: same seq/hash, new id).  Two chains
sharing seq numbers never make records look missing or altered.

Findings, each naming the node and the position (``seq``); docs/queries.md
says what each means and what to do:

* ``altered``: a record's content no longer matches its hash (or a long
  value such as the output its digest, ``contract.R_DIGESTS``), or a derived row disagrees with its record (an exit code, an
  output, a user, a job ID or a start time edited in the rows);
* ``gap``: positions missing from the chain (deleted rows), unless a
  ``spool_evicted`` record explains them (then reported under ``info``);
  also a record that the derived rows prove was written but is gone;
* ``deleted_row``: a record's derived row is gone (the run vanished from
  ``why``, ``drains`` and ``audit``);
* ``reorder``: a record sits at a position other than its own ``seq``, or
  links to a record that is not its predecessor but is elsewhere in the chain;
* ``reset``: the node's chain was re-created (a later chain of the node), or
  a chain restarts inside itself (``prev`` is the genesis hash past position 1);
* ``tail_missing``, ``rewritten``, ``chain_missing``, ``bad_signature``,
  ``untrusted_key``: the store contradicts a head the node signed (see
  ``verify_heads``).
"""

from __future__ import annotations

from emitter import contract as C
from queries.verify_heads import check_heads
from queries.verify_rows import MAX_PROBLEMS, check_rows, load, problem

def _chain_order(con, where, params) -> dict:
    """(cluster, node, chain) -> (rank among the node's chains, the previous
    chain's (chain, last seq, last hash) or None), chains ordered by their
    first record's ts (a record too damaged to tell sorts last)."""
    firsts: dict = {}
    for cluster, nd, chain, first_rec, last_seq, last_hash in con.execute(
            f"SELECT cluster, node, chain, arg_min(record, seq), max(seq), arg_max(hash, seq) "
            f"FROM journal{where} GROUP BY cluster, node, chain", params).fetchall():
        rec = load(first_rec) or {}
        ts = rec.get(C.R_TS)
        ts = ts if type(ts) is int else None
        firsts.setdefault((cluster, nd), []).append(
            ((ts is None, ts or 0, chain), chain, last_seq, last_hash))
    order = {}
    for (cluster, nd), lst in firsts.items():
        lst.sort()
        before = None
        for rank, (_, chain, last_seq, last_hash) in enumerate(lst):
            order[(cluster, nd, chain)] = (rank, before)
            before = (chain, last_seq, last_hash)
    return order


def verify_chain(con, node=None, keys: dict | None = None) -> dict:
    """Verify every node's chain (or only ``node``'s): {ok, problems, info, checked}.

    ``keys``: node -> the nkey public key its chain heads must be signed
    with (from the NATS server's per-node credentials); without it a head's
    signature is checked against the key the head names.
    """
    where, params = (" WHERE node = ?", [str(node)]) if node else ("", [])
    order = _chain_order(con, where, params)
    walk = _Walk(order)
    cur = con.execute(f"SELECT cluster, node, chain, seq, kind, hook_id, hash, prev, record FROM journal{where} "
                      f"ORDER BY cluster, node, chain, seq", params)
    while True:
        batch = cur.fetchmany(10_000)
        if not batch:
            break
        for row in batch:
            walk.feed(*row)
    walk.finish()
    problems = walk.problems
    _classify_links(con, walk.pending_links, problems)
    check_rows(con, node, problems, walk.gaps)
    heads = check_heads(con, node, problems, walk.info, walk.ends, keys)
    problems.sort(key=lambda p: (p["cluster"], p["node"], order.get((p["cluster"], p["node"], p["chain"]),
                                                                   (-1,))[0],
                                 p["seq"] if p["seq"] is not None else -1))
    return {"ok": not problems, "problems": problems, "info": walk.info,
            "checked": {"nodes": len(walk.nodes), "chains": walk.chains, "records": walk.n_records,
                        **heads},
            "truncated": len(problems) >= MAX_PROBLEMS}


class _Walk:
    """The chain walk: fed one journal row at a time, in (cluster, node,
    chain, seq) order; keeps one chain's state, so memory stays flat."""

    def __init__(self, order):
        self.order = order
        self.problems: list[dict] = []
        self.info: list[dict] = []
        # Chain gaps per (cluster, node, chain), so that the row checks do not
        # report the same deletion twice.
        self.gaps: dict = {}
        # (cluster, node, chain) -> (last seq, its record's hash): for the heads.
        self.ends: dict = {}
        self.pending_links: list[tuple] = []
        self.n_records = self.chains = 0
        self.nodes: set = set()
        self.key = None
        self.cut: list[int] = []

    def feed(self, cluster, nd, ch, seq, kind, hook_id, h, prev, text):
        self.n_records += 1
        if (cluster, nd, ch) != self.key:
            self._start_chain(cluster, nd, ch)
        rec = load(text)
        if rec is None:
            self._problem(seq, "altered", "record is not valid JSON (or not a JSON object)")
            self._advance(seq, h)
            return
        actual = C.record_hash(rec)
        own_ok = self._check_record(seq, kind, hook_id, h, prev, rec, actual)
        if kind == C.K_SPOOL_EVICTED:
            span = rec.get(C.R_EVICTED_SEQS) or []
            if len(span) == 2:
                self.explained.append((int(span[0]), int(span[1])))
        if self.last_seq is None:
            self._check_first(seq, kind, rec)
        else:
            self._check_next(seq, rec, own_ok)
        self._advance(seq, actual)

    def _start_chain(self, cluster, nd, ch):
        self.finish()
        self.cut: list[int] = []
        self.key = (cluster, nd, ch)
        self.last_seq = self.last_hash = None
        self.explained: list[tuple[int, int]] = []
        self.chains += 1
        self.nodes.add((cluster, nd))
        self.rank, self.before = self.order.get(self.key, (0, None))
        self.linked = False  # this chain links on from the node's previous chain

    def _advance(self, seq, h):
        self.last_seq, self.last_hash = seq, h
        self.ends[self.key] = (seq, h)

    def _problem(self, seq, kind, detail):
        cluster, nd, ch = self.key
        problem(self.problems, cluster, nd, seq, kind, detail, ch)

    def _check_record(self, seq, kind, hook_id, h, prev, rec, actual) -> bool:
        """The record against its own hash (and output digest), and the
        journal columns against the record; True when its hash holds."""
        cluster, nd, ch = self.key
        own_ok = actual == rec.get(C.R_HASH)
        if not own_ok:
            self._problem(seq, "altered",
                          f"{rec.get(C.R_KIND, kind)} record at position {seq} does not match its hash "
                          f"(stored {str(rec.get(C.R_HASH))[:12]}, content hashes to {actual[:12]})")
        elif h != actual or prev != rec.get(C.R_PREV) or kind != rec.get(C.R_KIND) \
                or hook_id != rec.get(C.R_HOOK_ID) or nd != rec.get(C.R_NODE) \
                or ch != rec.get(C.R_CHAIN, "") or cluster != rec.get(C.R_CLUSTER):
            self._problem(seq, "altered", f"journal columns at position {seq} disagree with the record they hold")
        self._check_digests(seq, rec)
        rseq = rec.get(C.R_SEQ)
        if own_ok and rseq != seq:
            self._problem(seq, "reorder", f"position {seq} holds the record written as position {rseq}")
        return own_ok

    def _check_digests(self, seq, rec):
        """Long values (output, path...) are hashed through their digest
        (``contract.R_DIGESTS``): the text must still match it, unless it was
        cut in transit to fit a message (then only the digest is verifiable)."""
        for path, what in C.digest_problems(rec):
            if what == "cut":
                # first, last, count: flat memory on any chain
                self.cut = [self.cut[0] if self.cut else seq, seq, (self.cut[2] if self.cut else 0) + 1]
            else:
                self._problem(seq, "altered", f"the {path} in the record at position {seq} does not match "
                                              f"its digest: the text was edited")

    def finish(self):
        """Info about the chain just walked (values cut in transit); called
        at each chain's end and once after the last row."""
        if self.key is not None and self.cut:
            cluster, nd, ch = self.key
            self.info.append({"cluster": cluster, "node": nd, "chain": ch, "seq": self.cut[0], "kind": "cut",
                              "detail": f"{self.cut[2]} value(s) (positions {self.cut[0]}..{self.cut[1]}) "
                                        f"were cut in transit to fit a message: only their digests "
                                        f"are verifiable"})

    def _check_first(self, seq, kind, rec):
        """The first record of a chain: a reset, an upgraded head, or a gap from position 1."""
        rprev, rank, before = rec.get(C.R_PREV), self.rank, self.before
        if rank and before is not None and rprev == before[2] and seq == before[1] + 1:
            # A chain.head from before chain ids, upgraded: same chain, new id.
            self.linked = True
        elif rank:
            self._problem(seq, "reset",
                          f"chain {self.key[2] or '(none)'} starts at position {seq} after chain "
                          f"{(before[0] if before else '') or '(none)'}: the node's journal was "
                          f"re-created (chain head lost, spool wiped or node reimaged)")
        if seq != 1 and rprev == C.CHAIN_GENESIS and not rank:
            self._genesis_reset(seq)
        elif seq != 1 and kind != C.K_SPOOL_EVICTED and not self.linked and rprev != C.CHAIN_GENESIS:
            self._note_gap(1, seq - 1, rec)

    def _check_next(self, seq, rec, own_ok):
        rprev = rec.get(C.R_PREV)
        if seq > self.last_seq + 1:
            self._note_gap(self.last_seq + 1, seq - 1, rec)
        if rprev == C.CHAIN_GENESIS and seq != 1:
            self._genesis_reset(seq)
        elif seq == self.last_seq + 1 and rprev != self.last_hash and own_ok:
            self.pending_links.append((*self.key, seq, rprev))

    def _genesis_reset(self, seq):
        self._problem(seq, "reset", f"chain starts again at position {seq} (prev is the genesis hash): "
                                    f"the node's chain head was lost")

    def _note_gap(self, first, last, rec):
        self.gaps.setdefault(self.key, []).append((first, last))
        # The spool_evicted record follows the gap it explains (it is written
        # into the next hook's file), so this record itself may be it.
        spans = list(self.explained)
        if rec.get(C.R_KIND) == C.K_SPOOL_EVICTED and len(rec.get(C.R_EVICTED_SEQS) or []) == 2:
            spans.append(tuple(rec[C.R_EVICTED_SEQS]))
        cluster, nd, ch = self.key
        if any(a <= first and last <= b for a, b in spans):
            self.info.append({"cluster": cluster, "node": nd, "chain": ch, "seq": first, "kind": "evicted",
                              "detail": f"positions {first}..{last} were evicted from the node's bounded "
                                        f"spool before shipping (spool_evicted record)"})
            return
        n = last - first + 1
        self._problem(first, "gap", f"{n} record(s) missing at position {first}" + (f"..{last}" if n > 1 else ""))


def _classify_links(con, pending, problems):
    """A record whose ``prev`` is not its predecessor's hash: ``reorder`` if
    it links to a record elsewhere in its chain, else ``altered``.  Runs after
    the walk (one cursor at a time, so an open transaction sees its own
    changes) and re-reads only the chains that have such a link, keeping only
    the hashes asked about: memory stays flat on any store size."""
    by_chain: dict = {}
    for cl, nd, ch, seq, prev in pending:
        by_chain.setdefault((cl, nd, ch), []).append((seq, prev))
    for (cl, nd, ch), links in by_chain.items():
        wanted = {prev for _, prev in links}
        found = {}
        cur = con.execute("SELECT seq, record FROM journal WHERE cluster = ? AND node = ? AND chain = ?",
                          [cl, nd, ch])
        while True:
            rows = cur.fetchmany(10_000)
            if not rows:
                break
            for seq, text in rows:
                rec = load(text)
                h = C.record_hash(rec) if rec is not None else None
                if h in wanted:
                    found[h] = seq
        for seq, prev in links:
            if prev in found:
                problem(problems, cl, nd, seq, "reorder",
                        f"record at position {seq} links to the record at position {found[prev]}, "
                        f"not to its predecessor", ch)
            else:
                problem(problems, cl, nd, seq, "altered",
                        f"record at position {seq} does not link to the record at position {seq - 1}: "
                        f"one of them was changed", ch)
