"""The benchmarks' template journal writer writes what the runner writes."""

import json

from emitter import contract as c
from emitter import journal as jn
from tests.bench.simjournal import SimNode


def test_sim_files_are_valid_chained_runner_journals(tmp_path):
    sim = SimNode(tmp_path, "n1", "cl")
    assert sim.hook(1, n_scripts=2) == 6
    assert sim.hook(2, n_scripts=3, fail_index=1) == 6  # stops at the failing script
    sim.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 2 and not list(tmp_path.glob(".tmp-*"))
    recs = []
    for f in files:
        got, damage = jn.read_records(f)
        assert damage == []
        for line, rec in zip(f.read_bytes().splitlines(), got):
            assert line.decode() == c.canonical_json(rec)  # the contract's byte form
        recs += got
    assert [r[c.R_SEQ] for r in recs] == list(range(1, 13))
    assert all(r[c.R_PREV] == p[c.R_HASH] for p, r in zip(recs, recs[1:]))
    assert recs[0][c.R_PREV] == c.CHAIN_GENESIS and len({r[c.R_CHAIN] for r in recs}) == 1
    assert [r[c.R_KIND] for r in recs[6:]] == [c.K_HOOK_STARTED, c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED,
                                               c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED, c.K_HOOK_ENDED]
    ended = recs[-1]
    assert ended[c.R_STATUS] == 1 and ended[c.R_FAILED_INDEX] == 1

    # The runner's own writer continues the simulated chain from chain.head.
    j = jn.Journal(tmp_path, node="n1", cluster="cl", fsync=False)
    j.append(c.K_HOOK_STARTED, {c.R_CONTEXT: "prolog_slurmd"})
    j.close()
    nxt = jn.read_records(j.path)[0][0]
    assert (nxt[c.R_SEQ], nxt[c.R_PREV], nxt[c.R_CHAIN]) == (13, recs[-1][c.R_HASH], recs[-1][c.R_CHAIN])
    assert json.loads(files[0].read_bytes().splitlines()[0])[c.R_JOB]["job_id"] == "1"
