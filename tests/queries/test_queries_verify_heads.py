"""Signed chain heads against the store: a deleted tail, a consistent
rewrite, a replaced chain and forged heads, on both sources.

The ``chain_heads`` rows are written here as the collector stores them
(``collector.schema``: cluster, node, chain, seq, hash, ts, signature,
public_key; the node signs ``verify_heads.head_payload`` with its NKey),
into the DuckDB store or as Parquet files in the archive.
"""

import base64
import json
import os
from datetime import timedelta

import duckdb
import nkeys
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.queries.queries_scenario import build_scenario

from emitter import contract as C
from queries.source import open_source
from queries.verify import verify_chain
from queries.verify_heads import head_payload, load_keys, signature_ok

_SCHEMA = pa.schema([("cluster", pa.string()), ("node", pa.string()), ("chain", pa.string()),
                     ("seq", pa.uint64()), ("hash", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                     ("signature", pa.string()), ("public_key", pa.string())])


def _seed():
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


_KEYS: dict = {}


def _kp(node):
    if node not in _KEYS:
        _KEYS[node] = nkeys.from_seed(_seed())
    return _KEYS[node]


def heads_of(b, sign=True, kp_for=_kp):
    """One head per chain at its last record, published a second later."""
    last = {}
    for j in b.rows["journal"]:
        key = (j["cluster"], j["node"], j["chain"])
        if key not in last or j["seq"] > last[key]["seq"]:
            last[key] = j
    out = []
    for (cl, nd, ch), j in sorted(last.items()):
        ts = json.loads(j["record"])[C.R_TS] // 1000 * 1000 + 10**9
        out.append(_head(cl, nd, ch, j["seq"], j["hash"], ts, kp_for(nd) if sign else None))
    return out


def _head(cl, nd, ch, seq, h, ts_ns, kp):
    from tests.queries.builder import from_ns

    sig = pub = None
    if kp is not None:
        sig = base64.b64encode(kp.sign(head_payload(cl, nd, ch, seq, h, ts_ns))).decode()
        pub = kp.public_key.decode()
    return {"cluster": cl, "node": nd, "chain": ch, "seq": seq, "hash": h, "ts": from_ns(ts_ns),
            "signature": sig, "public_key": pub}


def _open(b, heads, tmp_path, kind):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if kind == "db":
        path = b.write_db(tmp_path / "s.duckdb")
        con = duckdb.connect(path)
        try:
            con.register("h", pa.Table.from_pylist(heads, schema=_SCHEMA))
            con.execute("INSERT INTO chain_heads BY NAME SELECT * FROM h")
        finally:
            con.close()
        return open_source(db=path)
    root = b.write_archive(tmp_path / "archive")
    by_cluster: dict = {}
    for h in heads:
        by_cluster.setdefault(h["cluster"], []).append(h)
    for cl, hs in by_cluster.items():
        d = os.path.join(root, "chain_heads", f"cluster={cl}", "date=2026-11-03")
        os.makedirs(d)
        tbl = pa.Table.from_pylist(hs, schema=_SCHEMA).drop_columns(["cluster"])
        pq.write_table(tbl, os.path.join(d, "hookscope-collector-000000000001-000000000100.parquet"))
    return open_source(archive=root)


@pytest.fixture(params=["db", "archive"])
def kind(request):
    return request.param


def _found(r):
    return [(p["node"], p["seq"], p["kind"]) for p in r["problems"]]


def _journal(b, node):
    return [r for r in b.rows["journal"] if r["node"] == node]


def _drop_last_hook(b, node):
    last = _journal(b, node)[-1]["hook_id"]
    assert last is not None, f"{node}'s chain does not end with a hook"
    for table in ("journal", "hook_runs", "script_runs"):
        b.rows[table] = [r for r in b.rows[table] if r["hook_id"] != last]
    return last


def test_signed_heads_of_an_untouched_store(tmp_path, kind):
    b = build_scenario()
    heads = heads_of(b)
    r = verify_chain(_open(b, heads, tmp_path, kind))
    assert r["ok"], r["problems"][:3]
    assert r["checked"]["heads"] == r["checked"]["chains"] == len(heads)
    assert r["checked"]["signed_heads"] == len(heads)
    assert [i["kind"] for i in r["info"]] == ["evicted"]  # every chain attested


def test_deleted_last_hook_is_a_missing_tail(tmp_path, kind):
    # The whole last hook of ep01 deleted from every table: nothing in the
    # store shows it, the head ep01 signed does.
    b = build_scenario()
    heads = heads_of(b)
    end = _journal(b, "ep01")[-1]["seq"]
    _drop_last_hook(b, "ep01")
    left = _journal(b, "ep01")[-1]["seq"]
    r = verify_chain(_open(b, heads, tmp_path, kind))
    assert _found(r) == [("ep01", left + 1, "tail_missing")]
    assert f"{left + 1}..{end} were deleted" in r["problems"][0]["detail"]


def test_archive_tail_dropped_from_every_table(tmp_path):
    # The last Parquet rows of a chain dropped (journal and derived rows).
    b = build_scenario()
    heads = heads_of(b)
    for node in ("rec01", "n003"):
        _drop_last_hook(b, node)
    r = verify_chain(_open(b, heads, tmp_path, "archive"))
    assert [(n, k) for n, _, k in _found(r)] == [("n003", "tail_missing"), ("rec01", "tail_missing")]


def _rewrite_from(b, node, pos, edit, every=False):
    """A store admin edits the record at ``pos`` (``every``: and each later
    one) with ``edit(rec)`` and re-hashes every later record of the chain,
    keeping the links whole."""
    prev = None
    for row in _journal(b, node):
        if row["seq"] < pos:
            continue
        rec = json.loads(row["record"])
        if row["seq"] != pos:
            rec[C.R_PREV] = prev
        if row["seq"] == pos or every:
            edit(rec)
        rec[C.R_HASH] = prev = C.record_hash(rec)
        row.update(record=C.canonical_json(rec), hash=rec[C.R_HASH], prev=rec[C.R_PREV])


def test_consistent_rewrite_is_caught_by_the_head(tmp_path, kind):
    # hang01's timeout turned into a success everywhere: the records
    # (re-hashed to the end of the chain) and the rows agree, the chain walk
    # and the row checks see nothing; only the signed head does.
    b = build_scenario()
    heads = heads_of(b)
    j = _journal(b, "hang01")
    ended = next(r for r in j if r["kind"] == C.K_SCRIPT_ENDED and json.loads(r["record"])[C.R_TIMED_OUT])
    hook_end = next(r for r in j if r["kind"] == C.K_HOOK_ENDED and r["hook_id"] == ended["hook_id"])

    def ok(rec):
        rec.update({C.R_EXIT: 0, C.R_SIGNAL: None, C.R_TIMED_OUT: False})

    _rewrite_from(b, "hang01", ended["seq"], ok)
    _rewrite_from(b, "hang01", hook_end["seq"], lambda rec: rec.update({C.R_STATUS: 0, C.R_FAILED_INDEX: None}))
    for s in b.rows["script_runs"]:
        if s["hook_id"] == ended["hook_id"] and s["timed_out"]:
            s.update(exit_code=0, signal=None, timed_out=False)
    for h in b.rows["hook_runs"]:
        if h["hook_id"] == ended["hook_id"]:
            h.update(status=0, failed_index=None)
    without = verify_chain(_open(b, [], tmp_path / "none", kind))
    assert without["ok"]  # what an unkeyed chain cannot show
    r = verify_chain(_open(b, heads, tmp_path, kind))
    assert _found(r) == [("hang01", j[-1]["seq"], "rewritten")]


def test_replaced_chain_is_missing(tmp_path, kind):
    # perm01's chain swapped for a fabricated one (a new chain id).
    b = build_scenario()
    heads = heads_of(b)
    old = _journal(b, "perm01")[0]["chain"]
    _rewrite_from(b, "perm01", 1, lambda rec: rec.update({C.R_CHAIN: "f" * 16}), every=True)
    for row in _journal(b, "perm01"):
        row["chain"] = "f" * 16
    r = verify_chain(_open(b, heads, tmp_path, kind))
    assert [(n, k) for n, _, k in _found(r)] == [("perm01", "chain_missing")]
    assert old in r["problems"][0]["detail"] and "f" * 16 in r["problems"][0]["detail"]
    assert ("perm01", "unattested") in {(i["node"], i["kind"]) for i in r["info"]}


def test_forged_and_edited_heads(tmp_path, kind):
    b = build_scenario()
    heads = heads_of(b)
    by = {h["node"]: h for h in heads}
    by["gpu01"]["seq"] += 5  # an edited head row: its signature no longer holds
    mallory = nkeys.from_seed(_seed())
    forged = dict(by["kt01"])
    # A store admin's own key signs a head that fits a shortened chain.
    forged.update(_head(forged["cluster"], "kt01", forged["chain"], forged["seq"] + 1, "e" * 64,
                        10**18, mallory))
    heads.append(forged)
    r = verify_chain(_open(b, heads, tmp_path, kind))
    # Unpinned, the forged head verifies under its own key: it is checked
    # against the store (and contradicts it).
    assert ("gpu01", by["gpu01"]["seq"], "bad_signature") in _found(r)
    assert ("kt01", forged["seq"], "tail_missing") in _found(r)
    pinned = {n: _kp(n).public_key.decode() for n in by}
    r = verify_chain(_open(b, heads, tmp_path / "pinned", kind), keys=pinned)
    assert sorted(_found(r)) == [("gpu01", by["gpu01"]["seq"], "bad_signature"),
                                 ("kt01", forged["seq"], "untrusted_key")]


def test_unsigned_heads_still_count_unless_keys_are_pinned(tmp_path, kind):
    b = build_scenario()
    heads = heads_of(b, sign=False)
    _drop_last_hook(b, "ep01")
    r = verify_chain(_open(b, heads, tmp_path, kind))
    assert [(n, k) for n, _, k in _found(r)] == [("ep01", "tail_missing")]
    assert r["checked"]["signed_heads"] == 0
    r = verify_chain(_open(b, heads, tmp_path / "p", kind), keys={"ep01": _kp("ep01").public_key.decode()})
    assert [(n, k) for n, _, k in _found(r)] == [("ep01", "untrusted_key")]


def test_signature_and_keys_helpers(tmp_path):
    kp = nkeys.from_seed(_seed())
    msg = head_payload("c1", "n1", "ab" * 8, 7, "0" * 64, 10**18)
    sig = kp.sign(msg)
    pub = kp.public_key.decode()
    assert signature_ok(pub, sig, msg) and signature_ok(pub, base64.b64encode(sig).decode(), msg)
    assert signature_ok(pub, sig.hex(), msg)
    assert not signature_ok(pub, sig, msg + b" ")
    assert not signature_ok(pub[:-1] + ("A" if pub[-1] != "A" else "B"), sig, msg)  # checksum
    assert not signature_ok("not a key", sig, msg) and not signature_ok(pub, "zz", msg)
    (tmp_path / "k.json").write_text(json.dumps({"n1": pub}))
    assert load_keys(tmp_path / "k.json") == {"n1": pub}


def test_keys_from_gen_auth_conf(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "gen_auth_h5", Path(__file__).resolve().parents[2] / "deploy" / "nats" / "gen_auth.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    conf = gen.generate("c1", ["node001", "node.2"], tmp_path / "auth")
    keys = load_keys(conf)
    seed = (tmp_path / "auth" / "nodes" / "node001.nk").read_text().strip()
    assert keys["node001"] == nkeys.from_seed(seed.encode()).public_key.decode()
    assert C.subject_token("node.2") in keys and len(keys) == 2


def test_verify_cli_pins_keys_and_refuses_a_window(tmp_path):
    from click.testing import CliRunner

    from queries.cli import audit

    b = build_scenario()
    heads = heads_of(b)
    _open(b, heads, tmp_path, "db").close()
    db = str(tmp_path / "s.duckdb")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"ep01": nkeys.from_seed(_seed()).public_key.decode()}))
    res = CliRunner().invoke(audit, ["verify", "--db", db, "--keys", str(keys)])
    assert res.exit_code == 1 and "untrusted_key" in res.output and "ep01" in res.output
    res = CliRunner().invoke(audit, ["verify", "--db", db])
    assert res.exit_code == 0 and res.output.startswith("OK:")
    res = CliRunner().invoke(audit, ["verify", "--db", db, "--since", "7d"])
    assert res.exit_code == 2 and "takes no --since/--until" in res.output
    res = CliRunner().invoke(audit, ["verify", "--db", db, "--keys", str(tmp_path / "nope.json")])
    assert res.exit_code == 1 and "cannot read the node keys file" in res.output


def test_head_time_is_signed(tmp_path):
    # Moving a head's time (to make a stale node look fresh) breaks it.
    b = build_scenario()
    heads = heads_of(b)
    heads[0]["ts"] += timedelta(days=1)
    r = verify_chain(_open(b, heads, tmp_path, "db"))
    assert [(p["node"], p["kind"]) for p in r["problems"]] == [(heads[0]["node"], "bad_signature")]


def test_heads_made_by_the_agent_and_decoded_by_the_collector(tmp_path):
    # The wire format end to end: emitter.chainheads signs and encodes,
    # collector.decode decodes (checking the subject's identity and the
    # signature), collector.columns types the rows, verify checks them.
    from collector.columns import to_arrow
    from collector.decode import Decoded, decode_message
    from emitter import chainheads

    b = build_scenario()
    tracker = chainheads.HeadTracker()
    tracker.observe(json.loads(j["record"]) for j in b.rows["journal"])
    rows = []
    for n, head in enumerate(tracker.pending(all_heads=True), 1):
        ts = json.loads(next(j["record"] for j in b.rows["journal"] if j["hash"] == head["hash"]))[C.R_TS]
        signed = chainheads.sign({**head, "ts": ts + 10**9}, _kp(head["node"]))
        subject, data, _ = chainheads.message([signed], head["cluster"], head["node"])
        dec = decode_message(data, subject, n, ts + 2 * 10**9)
        assert isinstance(dec, Decoded), dec
        rows += dec.rows["chain_heads"]
    victim = "rec01"
    _drop_last_hook(b, victim)
    path = b.write_db(tmp_path / "s.duckdb")
    con = duckdb.connect(path)
    con.register("h", to_arrow("chain_heads", rows))
    con.execute("INSERT INTO chain_heads BY NAME SELECT * FROM h")
    con.close()
    pinned = {n: _kp(n).public_key.decode() for n in {r[1] for r in rows}}
    r = verify_chain(open_source(db=path), keys=pinned)
    assert r["checked"]["signed_heads"] == r["checked"]["heads"] == len(rows)
    assert [(n, k) for n, _, k in _found(r)] == [(victim, "tail_missing")]


def test_unattested_chains_are_listed_then_summarised(tmp_path):
    # Heads for a few nodes only (as right after an upgrade): 20 nodes are
    # listed, the rest summarised in one line; a chain no head covers is not
    # a problem.
    from queries.verify_heads import MAX_UNATTESTED_LISTED

    b = build_scenario()
    heads = [h for h in heads_of(b) if h["node"] in ("ep01", "gpu01")]
    r = verify_chain(_open(b, heads, tmp_path, "db"))
    assert r["ok"] and r["checked"]["heads"] == 2
    un = [i for i in r["info"] if i["kind"] == "unattested"]
    n_nodes = len({j["node"] for j in b.rows["journal"]}) - 2
    assert len(un) == MAX_UNATTESTED_LISTED + 1 and un[-1]["node"] is None
    assert f"on {n_nodes - MAX_UNATTESTED_LISTED} more node(s)" in un[-1]["detail"]
