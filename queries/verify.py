"""``audit verify``: tamper evidence from the per-node hash chain.

Each node's journal records carry ``seq`` (+1 per record), ``prev`` (the hash
of record seq-1) and ``hash`` (``contract.record_hash``).  The store keeps every
record verbatim in ``journal.record``.  This module recomputes each hash,
walks every (cluster, node, chain) chain in position order and checks that
the derived rows (hook_runs, script_runs) still say what their records say.

A node has one chain until its journal is re-created (spool wiped, chain.head
lost or corrupt): the runner then starts a new chain (new ``chain`` id, seq 1,
genesis ``prev``).  A node's chains are taken in the order of their first
record's ``ts``; every chain after the first is a ``reset`` at its first
position, unless it links on from the previous chain's last record (a head
written before chain ids were upgraded: same seq/hash, new id).  Two chains
sharing seq numbers never make records look missing or altered.

Problems, each naming the node and the position (``seq``):

* ``altered``: a record's content no longer matches its hash, or a derived
  row disagrees with its record (e.g. an exit_code edited in script_runs);
* ``gap``: positions missing from the chain (deleted rows), unless a
  ``spool_evicted`` record explains them (then reported under ``info``);
  also a record that the derived rows prove was written (a hook_runs row
  with a status needs its hook_ended) but is gone: deleting the end of a
  chain leaves no broken link, the derived rows still tell;
* ``reorder``: a record sits at a position other than its own ``seq``, or
  links to a record that is not its predecessor but is elsewhere in the chain;
* ``reset``: the node's chain was re-created (a later chain of the node), or
  a chain restarts inside itself (``prev`` is the genesis hash past position 1).
"""

from __future__ import annotations

import json

from emitter import contract as C

MAX_PROBLEMS = 10_000


def _problem(out, cluster, node, seq, kind, detail, chain=None):
    if len(out) < MAX_PROBLEMS:
        out.append({"cluster": cluster, "node": node, "chain": chain, "seq": seq, "kind": kind,
                    "detail": detail})


def _chain_order(con, where, params) -> dict:
    """(cluster, node, chain) -> (rank among the node's chains, the previous
    chain's (chain, last seq, last hash) or None), chains ordered by their
    first record's ts (a record too damaged to tell sorts last)."""
    firsts: dict = {}
    for cluster, nd, chain, first_rec, last_seq, last_hash in con.execute(
            f"SELECT cluster, node, chain, arg_min(record, seq), max(seq), arg_max(hash, seq) "
            f"FROM journal{where} GROUP BY cluster, node, chain", params).fetchall():
        try:
            ts = json.loads(first_rec).get(C.R_TS)
            ts = ts if type(ts) is int else None
        except (ValueError, AttributeError):
            ts = None
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


def verify_chain(con, node=None) -> dict:
    """Verify every node's chain (or only ``node``'s): {ok, problems, info, checked}."""
    params = []
    where = ""
    if node:
        where, params = " WHERE node = ?", [str(node)]
    order = _chain_order(con, where, params)
    cur = con.execute(f"SELECT cluster, node, chain, seq, kind, hook_id, hash, prev, record FROM journal{where} "
                      f"ORDER BY cluster, node, chain, seq", params)
    problems: list[dict] = []
    info: list[dict] = []
    # Chain gaps per (cluster, node, chain), so that the row checks do not
    # report the same deletion twice.
    gaps: dict = {}
    n_records = 0
    nodes = set()
    chains = 0
    key = None
    linked = False  # this chain links on from the node's previous chain
    last_seq = last_hash = None
    explained: list[tuple[int, int]] = []
    pending_links: list[tuple] = []

    while True:
        batch = cur.fetchmany(10_000)
        if not batch:
            break
        for cluster, nd, ch, seq, kind, hook_id, h, prev, text in batch:
            n_records += 1
            if (cluster, nd, ch) != key:
                key, last_seq, last_hash, explained = (cluster, nd, ch), None, None, []
                chains += 1
                nodes.add((cluster, nd))
                rank, before = order.get(key, (0, None))
                linked = False
            try:
                rec = json.loads(text)
                if type(rec) is not dict:
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                _problem(problems, cluster, nd, seq, "altered", f"record is not valid JSON ({exc})", ch)
                last_seq, last_hash = seq, h
                continue
            actual = C.record_hash(rec)
            own_ok = actual == rec.get(C.R_HASH)
            if not own_ok:
                _problem(problems, cluster, nd, seq, "altered",
                         f"{rec.get(C.R_KIND, kind)} record at position {seq} does not match its hash "
                         f"(stored {str(rec.get(C.R_HASH))[:12]}, content hashes to {actual[:12]})", ch)
            elif h != actual or prev != rec.get(C.R_PREV) or kind != rec.get(C.R_KIND) \
                    or hook_id != rec.get(C.R_HOOK_ID) or nd != rec.get(C.R_NODE) \
                    or ch != rec.get(C.R_CHAIN, ""):
                _problem(problems, cluster, nd, seq, "altered",
                         f"journal columns at position {seq} disagree with the record they hold", ch)
            rseq = rec.get(C.R_SEQ)
            if own_ok and rseq != seq:
                _problem(problems, cluster, nd, seq, "reorder",
                         f"position {seq} holds the record written as position {rseq}", ch)
            if kind == C.K_SPOOL_EVICTED:
                span = rec.get(C.R_EVICTED_SEQS) or []
                if len(span) == 2:
                    explained.append((int(span[0]), int(span[1])))
            rprev = rec.get(C.R_PREV)
            if last_seq is None:
                if rank and before is not None and rprev == before[2] and seq == before[1] + 1:
                    # A chain.head from before chain ids, upgraded: same chain, new id.
                    linked = True
                elif rank:
                    _problem(problems, cluster, nd, seq, "reset",
                             f"chain {ch or '(none)'} starts at position {seq} after chain "
                             f"{(before[0] if before else '') or '(none)'}: the node's journal was "
                             f"re-created (chain head lost, spool wiped or node reimaged)", ch)
                if seq != 1 and rprev == C.CHAIN_GENESIS and not rank:
                    _problem(problems, cluster, nd, seq, "reset",
                             f"chain starts again at position {seq} (prev is the genesis hash): "
                             f"the node's chain head was lost", ch)
                elif seq != 1 and kind != C.K_SPOOL_EVICTED and not linked and rprev != C.CHAIN_GENESIS:
                    _note_gap(problems, info, cluster, nd, ch, 1, seq - 1, explained, rec, gaps)
            else:
                if seq > last_seq + 1:
                    _note_gap(problems, info, cluster, nd, ch, last_seq + 1, seq - 1, explained, rec, gaps)
                if rprev == C.CHAIN_GENESIS and seq != 1:
                    _problem(problems, cluster, nd, seq, "reset",
                             f"chain starts again at position {seq} (prev is the genesis hash): "
                             f"the node's chain head was lost", ch)
                elif seq == last_seq + 1 and rprev != last_hash and own_ok:
                    pending_links.append((cluster, nd, ch, seq, rprev))
            last_seq, last_hash = seq, actual
    _classify_links(con, pending_links, problems)
    _check_rows(con, node, problems, gaps)
    problems.sort(key=lambda p: (p["cluster"], p["node"], order.get((p["cluster"], p["node"], p["chain"]),
                                                                   (-1,))[0],
                                 p["seq"] if p["seq"] is not None else -1))
    return {"ok": not problems, "problems": problems, "info": info,
            "checked": {"nodes": len(nodes), "chains": chains, "records": n_records},
            "truncated": len(problems) >= MAX_PROBLEMS}


def _note_gap(problems, info, cluster, node, chain, first, last, explained, rec, gaps):
    gaps.setdefault((cluster, node, chain), []).append((first, last))
    # The spool_evicted record follows the gap it explains (it is written
    # into the next hook's file), so this record itself may be it.
    spans = list(explained)
    if rec.get(C.R_KIND) == C.K_SPOOL_EVICTED and len(rec.get(C.R_EVICTED_SEQS) or []) == 2:
        spans.append(tuple(rec[C.R_EVICTED_SEQS]))
    if any(a <= first and last <= b for a, b in spans):
        info.append({"cluster": cluster, "node": node, "chain": chain, "seq": first, "kind": "evicted",
                     "detail": f"positions {first}..{last} were evicted from the node's bounded spool "
                               f"before shipping (spool_evicted record)"})
        return
    n = last - first + 1
    _problem(problems, cluster, node, first, "gap",
             f"{n} record(s) missing at position {first}" + (f"..{last}" if n > 1 else ""), chain)


# Derived-row columns and the record fields they must equal.
_SCRIPT_ENDED = {"exit_code": C.R_EXIT, "signal": C.R_SIGNAL, "timed_out": C.R_TIMED_OUT,
                 "refused": C.R_REFUSED, "path": C.R_PATH}
_SCRIPT_STARTED = {"sha256": C.R_SHA256, "path": C.R_PATH}
_HOOK_ENDED = {"status": C.R_STATUS, "failed_index": C.R_FAILED_INDEX}
_HOOK_STARTED = {"context": C.R_CONTEXT}


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
                try:
                    rec = json.loads(text)
                    h = C.record_hash(rec) if type(rec) is dict else None
                except ValueError:
                    continue
                if h in wanted:
                    found[h] = seq
        for seq, prev in links:
            if prev in found:
                _problem(problems, cl, nd, seq, "reorder",
                         f"record at position {seq} links to the record at position {found[prev]}, "
                         f"not to its predecessor", ch)
            else:
                _problem(problems, cl, nd, seq, "altered",
                         f"record at position {seq} does not link to the record at position {seq - 1}: "
                         f"one of them was changed", ch)


def _groups(cur, n=10_000):
    """(key, rows) per run of equal first column of an ordered cursor, fetched in chunks."""
    key, rows = None, []
    while True:
        chunk = cur.fetchmany(n)
        if not chunk:
            break
        for row in chunk:
            if rows and row[0] != key:
                yield key, rows
                rows = []
            key = row[0]
            rows.append(row)
    if rows:
        yield key, rows


_SCOLS = sorted(_SCRIPT_ENDED.keys() | _SCRIPT_STARTED.keys())
_HCOLS = sorted(_HOOK_ENDED.keys() | _HOOK_STARTED.keys())


def _check_rows(con, node, problems, gaps):
    """Every hook_runs / script_runs row must say what its journal records say.

    One query interleaves, ordered by hook_id, each hook's journal records
    (src 0), its script_runs rows (1) and its hook_runs row (2); Python holds
    one hook at a time, so tens of millions of records verify in flat memory
    (the soak's 20 M records needed 23 GB when they were all kept)."""
    nf, params = (" AND node = ?", [str(node)] * 3) if node else ("", [])
    nulls = lambda cols: ", ".join(f"NULL AS {c}" for c in cols)  # noqa: E731
    cur = con.execute(f"""
        SELECT hook_id, 0 AS src, cluster, node, seq AS pos, record, {nulls(_SCOLS)}, {nulls(_HCOLS)}
          FROM journal WHERE hook_id IS NOT NULL{nf}
        UNION ALL BY NAME
        SELECT hook_id, 1 AS src, cluster, node, idx AS pos, NULL AS record, {', '.join(_SCOLS)}, {nulls(_HCOLS)}
          FROM script_runs WHERE true{nf}
        UNION ALL BY NAME
        SELECT hook_id, 2 AS src, cluster, node, NULL AS pos, NULL AS record, {nulls(_SCOLS)}, {', '.join(_HCOLS)}
          FROM hook_runs WHERE true{nf}
        ORDER BY hook_id, src, pos""", params)
    names = [d[0] for d in cur.description]
    ix = {n: i for i, n in enumerate(names)}
    for hid, rows in _groups(cur):
        recs = _hook_records([r for r in rows if r[1] == 0], ix) if rows[0][1] == 0 else None
        for r in rows:
            if r[1] == 1:
                _check_row(problems, gaps, r[2], r[3], hid, r[4], {c: r[ix[c]] for c in _SCOLS}, recs)
            elif r[1] == 2:
                _check_row(problems, gaps, r[2], r[3], hid, None, {c: r[ix[c]] for c in _HCOLS}, recs)
    # Node events are keyed by their record's hash.
    for cluster, nd, event_id, ts in con.execute(
            f"SELECT n.cluster, n.node, n.event_id, n.ts FROM node_events n WHERE NOT EXISTS ("
            f"SELECT 1 FROM journal j WHERE j.cluster = n.cluster AND j.node = n.node "
            f"AND j.kind = '{C.K_NODE_EVENT}' AND j.hash = n.event_id){nf.replace('node', 'n.node')}",
            params[:1]).fetchall():
        _problem(problems, cluster, nd, None, "gap",
                 f"node_events row {event_id[:12]} ({ts}) has no node_event record in the journal")


def _hook_records(rows, ix) -> dict:
    """{(kind, index): (seq, record)} of one hook's journal rows (unparseable ones were reported)."""
    out = {}
    for row in rows:
        seq, text = row[ix["pos"]], row[ix["record"]]
        try:
            rec = json.loads(text)
        except ValueError:
            continue
        if type(rec) is dict:
            out[(rec.get(C.R_KIND), rec.get(C.R_INDEX))] = (seq, rec)
    return out


def _check_row(problems, gaps, cluster, nd, hid, idx, d, recs):
    """A hook_runs row (``idx`` None) or the script_runs row of script ``idx``
    against the hook's records ``recs`` (None: the hook has none)."""
    if idx is None:
        table, name, what = "hook_runs", f"hook {hid}", f"hook_runs row {hid}"
        # (record kind, fields to compare, whether the row claims the record exists)
        checks = ((C.K_HOOK_ENDED, _HOOK_ENDED, d["status"] is not None), (C.K_HOOK_STARTED, _HOOK_STARTED, True))
    else:
        table, name, what = "script_runs", f"hook {hid} script {idx}", f"script_runs row of hook {hid} script {idx}"
        # A sha256 comes from script_started, an exit status or refusal from script_ended.
        checks = ((C.K_SCRIPT_ENDED, _SCRIPT_ENDED, d["exit_code"] is not None or d["refused"] is not None),
                  (C.K_SCRIPT_STARTED, _SCRIPT_STARTED, d["sha256"] is not None))
    if recs is None:
        row = f"hook_runs row {hid}" if idx is None else f"script_runs row {hid}/{idx}"
        _problem(problems, cluster, nd, None, "altered", f"{row} has no journal record behind it")
        return
    for kind, fields, claimed in checks:
        hit = recs.get((kind, idx))
        if hit:
            _compare(problems, cluster, nd, hit, d, fields, what)
        elif claimed:
            _missing(problems, gaps, cluster, nd, recs, f"the {kind} record of {name} (its {table} row is stored)")


def _missing(problems, gaps, cluster, node, recs, what):
    """A record the derived rows prove was written is not in the journal:
    a deletion the chain cannot show (the end of a chain has no successor)."""
    first = min(seq for seq, _ in recs.values())
    after, last = max(recs.values(), key=lambda hit: hit[0])
    chain = last.get(C.R_CHAIN, "")  # a hook's records are in one chain
    if any(a <= after + 1 and b >= first - 1 for a, b in gaps.get((cluster, node, chain), ())):
        return  # inside a gap the chain walk already reported
    _problem(problems, cluster, node, after + 1, "gap", f"{what} is missing from the journal "
             f"(expected after position {after})", chain)


def _compare(problems, cluster, node, hit, row, fields, what):
    seq, rec = hit
    for col, field in fields.items():
        want, got = rec.get(field), row[col]
        if isinstance(want, bool) or isinstance(got, bool):
            same = bool(want) == bool(got) or (want is None and got is None)
        else:
            same = want == got
        if not same:
            _problem(problems, cluster, node, seq, "altered",
                     f"{what}: {col} is {got!r} but the journal record at position {seq} says {want!r}")
