"""Tamper evidence: delete, alter and swap stored rows, expect the right report
(kind, node, position), on both sources."""

import json

import pytest
from tests.queries.queries_scenario import build_scenario

from emitter import contract as C
from queries.source import open_source
from queries.verify import verify_chain


def _journal(b, node):
    return [r for r in b.rows["journal"] if r["node"] == node]


def _open(b, tmp_path, kind):
    if kind == "db":
        return open_source(db=b.write_db(tmp_path / "s.duckdb"))
    return open_source(archive=b.write_archive(tmp_path / "archive"))


@pytest.fixture(params=["db", "archive"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def base():
    return build_scenario()


def fresh():
    # Each test tampers with its own copy of the scenario's rows.
    return build_scenario()


def test_untouched_store_verifies(base, tmp_path, kind):
    con = _open(base, tmp_path, kind)
    r = verify_chain(con)
    assert r["ok"] is True and r["problems"] == []
    assert r["checked"]["records"] == len(base.rows["journal"])
    assert r["checked"]["nodes"] == len({j["node"] for j in base.rows["journal"]})
    # n000's spool eviction explains its gap: info, not a problem.
    assert [(i["node"], i["kind"]) for i in r["info"]] == [("n000", "evicted"), (None, "unattested")]
    assert "no chain heads" in r["info"][1]["detail"]


def test_deleted_row_is_a_gap_at_its_position(tmp_path, kind):
    b = fresh()
    victim = _journal(b, "fail01")[6]
    b.rows["journal"].remove(victim)
    r = verify_chain(_open(b, tmp_path, kind))
    assert not r["ok"]
    assert [(p["node"], p["seq"], p["kind"]) for p in r["problems"]] == [("fail01", victim["seq"], "gap")]


def test_deleted_last_rows_of_a_chain_start_are_gaps(tmp_path, kind):
    b = fresh()
    first = _journal(b, "hang01")[0]
    b.rows["journal"].remove(first)
    r = verify_chain(_open(b, tmp_path, kind), node="hang01")
    assert [(p["seq"], p["kind"]) for p in r["problems"]] == [(1, "gap")]


def test_altered_record_is_reported(tmp_path, kind):
    b = fresh()
    row = next(j for j in _journal(b, "fail01") if j["kind"] == C.K_SCRIPT_ENDED
               and json.loads(j["record"])[C.R_EXIT] == 3)
    rec = json.loads(row["record"])
    rec[C.R_EXIT] = 0  # someone hides the failure in the journal itself
    row["record"] = C.canonical_json(rec)
    r = verify_chain(_open(b, tmp_path, kind))
    kinds = {(p["node"], p["seq"], p["kind"]) for p in r["problems"]}
    assert ("fail01", row["seq"], "altered") in kinds
    assert {p["node"] for p in r["problems"]} == {"fail01"}


def test_altered_exit_code_in_script_runs(tmp_path, kind):
    b = fresh()
    sr = next(s for s in b.rows["script_runs"] if s["node"] == "hang01" and s["timed_out"])
    sr["exit_code"] = 0
    r = verify_chain(_open(b, tmp_path, kind))
    assert len(r["problems"]) == 1
    p = r["problems"][0]
    assert (p["node"], p["kind"]) == ("hang01", "altered") and "exit_code" in p["detail"]
    ended = next(j for j in _journal(b, "hang01") if j["kind"] == C.K_SCRIPT_ENDED
                 and json.loads(j["record"])[C.R_PATH] == sr["path"])
    assert p["seq"] == ended["seq"]


def test_altered_hook_status(tmp_path, kind):
    b = fresh()
    hr = next(h for h in b.rows["hook_runs"] if h["node"] == "ep01" and h["status"])
    hr["status"] = 0
    r = verify_chain(_open(b, tmp_path, kind), node="ep01")
    assert [(p["node"], p["kind"]) for p in r["problems"]] == [("ep01", "altered")]
    assert "status" in r["problems"][0]["detail"]


def test_swapped_rows_are_a_reorder(tmp_path, kind):
    b = fresh()
    j = _journal(b, "perm01")
    a, c = j[2], j[3]
    for f in ("kind", "hook_id", "hash", "prev", "record"):
        a[f], c[f] = c[f], a[f]
    r = verify_chain(_open(b, tmp_path, kind))
    found = {(p["node"], p["seq"], p["kind"]) for p in r["problems"]}
    assert ("perm01", a["seq"], "reorder") in found and ("perm01", c["seq"], "reorder") in found
    assert {k for (_, _, k) in found} == {"reorder"}


def test_rechained_reorder_detected_by_links(tmp_path, kind):
    # A forger re-numbers two records and recomputes their hashes: the prev
    # links still betray the order.
    b = fresh()
    j = _journal(b, "perm01")
    a, c = j[2], j[3]
    ra, rc = json.loads(a["record"]), json.loads(c["record"])
    ra[C.R_SEQ], rc[C.R_SEQ] = rc[C.R_SEQ], ra[C.R_SEQ]
    for row, rec in ((a, rc), (c, ra)):
        rec[C.R_HASH] = C.record_hash(rec)
        row.update(record=C.canonical_json(rec), hash=rec[C.R_HASH], prev=rec[C.R_PREV],
                   kind=rec[C.R_KIND], hook_id=rec[C.R_HOOK_ID])
    r = verify_chain(_open(b, tmp_path, kind), node="perm01")
    assert not r["ok"] and "reorder" in {p["kind"] for p in r["problems"]}
    assert all(p["node"] == "perm01" for p in r["problems"])


def test_chain_reset(tmp_path, kind):
    # The node lost chain.head: the writer chains on from the genesis hash.
    # (It restarts at seq 1 too, which the store's key cannot hold beside the
    # old records; what reaches the store is a genesis link mid-chain.)
    b = fresh()
    j = _journal(b, "kt01")
    prev = C.CHAIN_GENESIS
    for row in j[4:]:
        rec = json.loads(row["record"])
        rec[C.R_PREV] = prev
        rec[C.R_HASH] = prev = C.record_hash(rec)
        row.update(record=C.canonical_json(rec), hash=rec[C.R_HASH], prev=rec[C.R_PREV])
    for ev in b.rows["node_events"]:
        if ev["node"] == "kt01":
            ev["event_id"] = next(json.loads(r["record"])[C.R_HASH] for r in j
                                  if r["kind"] == C.K_NODE_EVENT)
    r = verify_chain(_open(b, tmp_path, kind))
    assert [(p["node"], p["seq"], p["kind"]) for p in r["problems"]] == [("kt01", j[4]["seq"], "reset")]


def _two_chains():
    """reimg01's journal is re-created between two hooks (node reimaged): the
    second chain starts at seq 1 again, with a new chain id."""
    from datetime import timedelta

    from tests.queries.builder import T0, StoreBuilder, script

    b = StoreBuilder(cluster="c1")
    ok = [script("/etc/slurm/prolog.d/10-ok.sh")]
    b.hook("reimg01", T0, "prolog_slurmd", 1, "alice", ok)
    b.hook("other01", T0, "prolog_slurmd", 1, "alice", ok)
    b.new_chain("reimg01")
    b.hook("reimg01", T0 + timedelta(hours=1), "prolog_slurmd", 2, "alice", ok)
    return b


def test_recreated_chain_is_one_reset_and_nothing_missing(tmp_path, kind):
    b = _two_chains()
    j = _journal(b, "reimg01")
    chains = list(dict.fromkeys(r["chain"] for r in j))
    assert len(chains) == 2
    second = [r for r in j if r["chain"] == chains[1]]
    assert second[0]["seq"] == 1 and {r["seq"] for r in second} <= {r["seq"] for r in j if r["chain"] == chains[0]}
    r = verify_chain(_open(b, tmp_path, kind))
    assert r["checked"] == {"nodes": 2, "chains": 3, "records": len(b.rows["journal"]),
                            "heads": 0, "signed_heads": 0}
    assert [(p["node"], p["chain"], p["seq"], p["kind"]) for p in r["problems"]] == \
        [("reimg01", chains[1], 1, "reset")]
    assert "re-created" in r["problems"][0]["detail"]


def test_recreated_chain_still_reports_its_own_gap(tmp_path, kind):
    # Two chains share seq numbers: a deletion in the second is still a gap
    # of the second chain (the first chain's copy of that seq hides nothing).
    b = _two_chains()
    j = _journal(b, "reimg01")
    victim = [r for r in j if r["chain"] == j[-1]["chain"]][2]
    b.rows["journal"].remove(victim)
    r = verify_chain(_open(b, tmp_path, kind))
    assert [(p["node"], p["seq"], p["kind"]) for p in r["problems"]] == \
        [("reimg01", 1, "reset"), ("reimg01", victim["seq"], "gap")]


def test_upgraded_head_links_on_without_reset(tmp_path, kind):
    # Records written before chain ids (chain '') and the records after the
    # runner upgraded the two-token chain.head: same seq/hash line, new id.
    b = _two_chains()
    j = _journal(b, "reimg01")
    first = j[0]["chain"]
    n_old = sum(1 for row in j if row["chain"] == first)
    prev = C.CHAIN_GENESIS
    for row in j:
        rec = json.loads(row["record"])
        if row["chain"] == first:
            del rec[C.R_CHAIN]
            row["chain"] = ""
        else:
            rec[C.R_SEQ] = row["seq"] = row["seq"] + n_old
        rec[C.R_PREV] = row["prev"] = prev
        rec[C.R_HASH] = prev = C.record_hash(rec)
        row.update(record=C.canonical_json(rec), hash=rec[C.R_HASH])
    r = verify_chain(_open(b, tmp_path, kind))
    assert r["ok"], r["problems"]
    assert r["checked"]["chains"] == 3


def test_node_filter(base, tmp_path):
    con = _open(base, tmp_path, "db")
    r = verify_chain(con, node="gpu01")
    assert r["ok"] and r["checked"]["nodes"] == 1
    assert r["checked"]["records"] == len(_journal(base, "gpu01"))


def test_deleted_chain_tail_is_found_through_the_rows(tmp_path, kind):
    # The last record of a chain has no successor to break; the hook_runs row
    # still proves its hook_ended was written.
    b = fresh()
    last = _journal(b, "ep01")[-1]
    assert last["kind"] == C.K_HOOK_ENDED
    b.rows["journal"].remove(last)
    r = verify_chain(_open(b, tmp_path, kind))
    assert [(p["node"], p["seq"], p["kind"]) for p in r["problems"]] == [("ep01", last["seq"], "gap")]
    assert "hook_ended" in r["problems"][0]["detail"]


def test_deleted_node_event_record(tmp_path):
    b = fresh()
    ev = next(j for j in _journal(b, "nr01") if j["kind"] == C.K_NODE_EVENT)
    b.rows["journal"].remove(ev)
    r = verify_chain(_open(b, tmp_path, "db"))
    assert [(p["node"], p["kind"]) for p in r["problems"]] == [("nr01", "gap")]


# ------------------------------------------------------------- properties
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_BASE = build_scenario()
_N = len(_BASE.rows["journal"])
_MEM = None


def _mem():
    """One in-memory store of the scenario (verify needs nothing else); each
    example mutates it inside a transaction that is rolled back."""
    global _MEM
    if _MEM is None:
        import duckdb

        from collector import schema

        con = duckdb.connect()
        schema.create_all(con)
        for table in _BASE.rows:
            con.register("batch", _BASE.arrow(table))
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM batch")
            con.unregister("batch")
        _MEM = con
    return _MEM


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, _N - 1))
def test_any_deleted_record_is_reported_for_its_node(i):
    con = _mem()
    victim = _BASE.rows["journal"][i]
    con.begin()
    try:
        con.execute("DELETE FROM journal WHERE node = ? AND seq = ?", [victim["node"], victim["seq"]])
        r = verify_chain(con)
    finally:
        con.rollback()
    assert not r["ok"]
    assert {p["node"] for p in r["problems"]} == {victim["node"]}
    # The chain walk names the gap's seq; a deleted *tail* leaves no gap in the
    # walk (without signed heads), so it is caught through the rows derived
    # from it (a row with no record), which carry no seq.
    tail = victim["seq"] == max(r_["seq"] for r_ in _BASE.rows["journal"]
                                if r_["node"] == victim["node"] and r_.get("chain") == victim.get("chain"))
    assert (any(p["seq"] == victim["seq"] for p in r["problems"]) or victim["kind"] == C.K_SPOOL_EVICTED
            or (tail and any(p["seq"] is None for p in r["problems"])))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, _N - 1), field=st.sampled_from([C.R_TS, C.R_PID, C.R_NODE, "extra"]))
def test_any_altered_record_is_reported_at_its_position(i, field):
    con = _mem()
    victim = _BASE.rows["journal"][i]
    rec = json.loads(victim["record"])
    rec[field] = rec.get(field, 0) + 1 if field != C.R_NODE else rec[field] + "x"
    con.begin()
    try:
        con.execute("UPDATE journal SET record = ? WHERE node = ? AND seq = ?",
                    [C.canonical_json(rec), victim["node"], victim["seq"]])
        r = verify_chain(con)
    finally:
        con.rollback()
    assert (victim["node"], victim["seq"], "altered") in {(p["node"], p["seq"], p["kind"]) for p in r["problems"]}
    assert verify_chain(con)["ok"]  # rolled back


def test_verify_memory_stays_flat_on_a_long_chain(tmp_path):
    """The 30-minute soak's 20 M records took 23 GB when verify kept every
    parsed record; it now streams.  60,000 chained records (one node, 10,000
    hooks) must verify within a few MB of Python memory, not ~150 MB."""
    import tracemalloc
    from datetime import timedelta

    import duckdb

    from tests.queries.builder import T0, StoreBuilder, script

    # Rows as the collector derives them, so the row checks run too.
    b = StoreBuilder(cluster="c")
    scripts = [script("/etc/slurm/prolog.d/10-a.sh", output="x" * 200),
               script("/etc/slurm/prolog.d/20-b.sh", output="y" * 200)]
    for h in range(10_000):
        b.hook("big1", T0 + h * timedelta(seconds=1), "prolog_slurmd", 10_000 + h, "alice", scripts)
    path = b.write_db(tmp_path / "big.duckdb")
    del b
    con = duckdb.connect(path)
    tracemalloc.start()
    try:
        r = verify_chain(con)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        con.close()
    assert r["ok"] and r["checked"]["records"] == 60_000, r["problems"][:3]
    assert peak < 40e6, f"verify held {peak / 1e6:.0f} MB of Python objects for 60,000 records"


# ------------------------------------------------------------- the rows say what the records say
# Each tamper below leaves the journal untouched and edits only what the
# queries read: verify recomputes the column from the records.
def _failed_script(b, node):
    return next(s for s in b.rows["script_runs"] if s["node"] == node and s["exit_code"])


def _seq_of(b, hook_id, kind, index=None):
    return next(j["seq"] for j in b.rows["journal"] if j["hook_id"] == hook_id and j["kind"] == kind
                and json.loads(j["record"]).get(C.R_INDEX) == index)


def _found(r):
    return [(p["node"], p["seq"], p["kind"]) for p in r["problems"]]


def test_rewritten_output_is_altered(tmp_path, kind):
    b = fresh()
    sr = _failed_script(b, "fail01")
    sr["output"] = "all good\n"  # hide the real error from `why`
    r = verify_chain(_open(b, tmp_path, kind))
    seq = _seq_of(b, sr["hook_id"], C.K_SCRIPT_ENDED, sr["idx"])
    assert _found(r) == [("fail01", seq, "altered")]
    assert "output is 'all good\\n'" in r["problems"][0]["detail"] and "permission denied" in r["problems"][0]["detail"]


def test_rewritten_user_and_job_are_altered(tmp_path, kind):
    b = fresh()
    sr = _failed_script(b, "fail01")
    hr = next(h for h in b.rows["hook_runs"] if h["hook_id"] == sr["hook_id"])
    hr["user_name"] = sr["user_name"] = "mallory"
    hr["job_id"] = sr["job_id"] = "9999"
    r = verify_chain(_open(b, tmp_path, kind))
    seq = _seq_of(b, sr["hook_id"], C.K_HOOK_STARTED)
    assert set(_found(r)) == {("fail01", seq, "altered")}
    details = " | ".join(p["detail"] for p in r["problems"])
    for col in ("user_name is 'mallory'", "job_id is '9999'"):
        assert f"hook_runs row {hr['hook_id']}: {col}" in details
        assert f"script_runs row of hook {hr['hook_id']} script {sr['idx']}: {col}" in details


def test_time_shift_is_altered(tmp_path, kind):
    # 30 days back: the failure leaves every window `why --since 7d` asks about.
    from datetime import timedelta

    b = fresh()
    sr = _failed_script(b, "fail01")
    shift = timedelta(days=30)
    hr = next(h for h in b.rows["hook_runs"] if h["hook_id"] == sr["hook_id"])
    for row in [hr] + [s for s in b.rows["script_runs"] if s["hook_id"] == sr["hook_id"]]:
        row["start_ts"] -= shift
        row["end_ts"] -= shift
    r = verify_chain(_open(b, tmp_path, kind))
    assert {(n, k) for n, _, k in _found(r)} == {("fail01", "altered")}
    cols = {p["detail"].split(": ", 1)[1].split(" is ")[0] for p in r["problems"]}
    assert cols == {"start_ts", "end_ts"}
    assert len(r["problems"]) == 2 * (1 + sum(1 for s in b.rows["script_runs"] if s["hook_id"] == sr["hook_id"]))


def test_every_derived_column_is_compared(tmp_path):
    # One edit per compared column, each found at the record it contradicts.
    from datetime import timedelta

    b = fresh()
    hr = next(h for h in b.rows["hook_runs"] if h["node"] == "gpu01" and h["status"])
    sr = next(s for s in b.rows["script_runs"] if s["hook_id"] == hr["hook_id"] and s["idx"] == 1)
    edits = {"context": "epilog_slurmd", "layout": "x", "restart_count": 7, "uid": 0, "partition": "p",
             "nodelist": "n9", "account": "a", "job_name": "j", "array_job_id": "1", "array_task_id": "2",
             "gpus": "0", "duration_ms": 1.0, "n_scripts": 9, "failed_index": 0, "warnings": ["w"],
             "runner_killed": True}
    sedits = {"path": "/x", "sha256": "0" * 64, "size": 1, "mode": 0o100777, "owner_uid": 1000,
              "mtime": sr["mtime"] - timedelta(days=1), "duration_ms": 1.0, "signal": 9, "timed_out": True,
              "refused": "x", "output_truncated": True, "exported": ["X"]}
    hr.update(edits)
    sr.update(sedits)
    r = verify_chain(_open(b, tmp_path, "db"), node="gpu01")
    got = {p["detail"].split(": ", 1)[1].split(" is ")[0] for p in r["problems"]}
    assert got == (edits.keys() - {"runner_killed"}) | sedits.keys()  # runner_killed: see below
    assert {p["kind"] for p in r["problems"]} == {"altered"}


def test_killed_runner_cannot_be_hidden(tmp_path, kind):
    # The runner died mid-hook: no hook_ended, the row says runner_killed.
    # Clearing the flag would drop the failure from every query.
    b = fresh()
    hr = next(h for h in b.rows["hook_runs"] if h["node"] == "kill01")
    hr["runner_killed"] = False
    r = verify_chain(_open(b, tmp_path, kind), node="kill01")
    assert [(p["kind"], "runner_killed is False" in p["detail"]) for p in r["problems"]] == [("altered", True)]


def test_deleted_hook_row_is_found(tmp_path, kind):
    # The run vanishes from why/drains/audit; its records are still there.
    b = fresh()
    sr = _failed_script(b, "fail01")
    b.rows["hook_runs"] = [h for h in b.rows["hook_runs"] if h["hook_id"] != sr["hook_id"]]
    b.rows["script_runs"] = [s for s in b.rows["script_runs"] if s["hook_id"] != sr["hook_id"]]
    r = verify_chain(_open(b, tmp_path, kind))
    n_scripts = 1 + sr["idx"]
    assert _found(r)[0] == ("fail01", _seq_of(b, sr["hook_id"], C.K_HOOK_STARTED), "deleted_row")
    assert {k for _, _, k in _found(r)} == {"deleted_row"} and len(r["problems"]) == 1 + n_scripts
    assert "hook_runs row of hook" in r["problems"][0]["detail"]


def test_edited_and_deleted_node_event_rows(tmp_path, kind):
    b = fresh()
    ev = next(e for e in b.rows["node_events"] if e["node"] == "fail01")
    ev["reason"] = "Kill task failed"  # blame Slurm instead of the prolog
    gone = next(e for e in b.rows["node_events"] if e["node"] == "kt01")
    b.rows["node_events"].remove(gone)
    r = verify_chain(_open(b, tmp_path, kind))
    assert [(n, k) for n, _, k in _found(r)] == [("fail01", "altered"), ("kt01", "deleted_row")]
    assert "reason is 'Kill task failed'" in r["problems"][0]["detail"]


def _digested(b, node, edit):
    """ep01's failing script_ended record re-sealed with its output behind a
    digest (``contract.R_DIGESTS``, as the journal seals long values), then
    ``edit(rec)`` applied after hashing; the next record relinked."""
    import hashlib

    row = next(j for j in _journal(b, node) if j["kind"] == C.K_SCRIPT_ENDED
               and json.loads(j["record"])[C.R_EXIT] == 1)
    rec = json.loads(row["record"])
    rec[C.R_DIGESTS] = {C.R_OUTPUT: hashlib.sha256(rec[C.R_OUTPUT].encode()).hexdigest()}
    rec[C.R_HASH] = C.record_hash(rec)
    edit(rec)
    row.update(record=C.canonical_json(rec), hash=rec[C.R_HASH])
    nxt = next(j for j in _journal(b, node) if j["seq"] == row["seq"] + 1)
    nrec = json.loads(nxt["record"])
    nrec[C.R_PREV] = rec[C.R_HASH]
    nrec[C.R_HASH] = C.record_hash(nrec)
    nxt.update(record=C.canonical_json(nrec), hash=nrec[C.R_HASH], prev=nrec[C.R_PREV])
    sr = next(s for s in b.rows["script_runs"] if s["hook_id"] == row["hook_id"] and s["exit_code"] == 1)
    sr["output"] = rec[C.R_OUTPUT]  # the rows follow the record, as the collector derives them
    return row


def test_output_edited_under_its_digest(tmp_path, kind):
    # The record hash covers the digest, not the text: only the digest
    # check can tell the text was edited.
    b = fresh()
    row = _digested(b, "ep01", lambda rec: rec.update({C.R_OUTPUT: "ok\n"}))
    r = verify_chain(_open(b, tmp_path, kind), node="ep01")
    assert _found(r) == [("ep01", row["seq"], "altered")]
    assert "the output in the record" in r["problems"][0]["detail"]


def test_output_cut_in_transit_is_info(tmp_path, kind):
    b = fresh()
    row = _digested(b, "ep01", lambda rec: rec.update({C.R_OUTPUT: rec[C.R_OUTPUT][-10:],
                                                       C.R_CUT: {C.R_OUTPUT: len(rec[C.R_OUTPUT])}}))
    r = verify_chain(_open(b, tmp_path, kind), node="ep01")
    assert r["ok"], r["problems"]
    assert [(i["seq"], i["kind"]) for i in r["info"] if i["kind"] == "cut"] == [(row["seq"], "cut")]


def test_deleted_last_hook_without_heads_is_not_detectable(tmp_path, kind):
    # The honest limit of an unkeyed chain: a whole hook deleted from the end
    # of a chain, from every table, leaves nothing behind.  verify says so
    # (info "unattested"); the signed chain heads close it (test_queries_verify_heads).
    b = fresh()
    last = _journal(b, "ep01")[-1]["hook_id"]
    for table in ("journal", "hook_runs", "script_runs"):
        b.rows[table] = [r for r in b.rows[table] if r["hook_id"] != last]
    r = verify_chain(_open(b, tmp_path, kind))
    assert r["ok"] and [i["kind"] for i in r["info"]][-1] == "unattested"
