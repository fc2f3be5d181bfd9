"""make demo: the example hooks run through the runner and are journaled."""

from emitter import contract as c
from emitter import demo


def test_demo_runs_examples_and_records_a_failing_gpu_check(tmp_path):
    journal_dir, recs, damage = demo.run_demo(tmp_path / "out")
    assert damage == []
    assert [r[c.R_SEQ] for r in recs] == list(range(1, len(recs) + 1))
    ends = [r for r in recs if r[c.R_KIND] == c.K_HOOK_ENDED]
    assert [e[c.R_STATUS] for e in ends] == [0, 0, 0, 2], "job 1001: 3 hooks pass; job 1002: GPU XID fails"
    failed = [r for r in recs if r[c.R_KIND] == c.K_SCRIPT_ENDED and r[c.R_EXIT]]
    assert len(failed) == 1 and failed[0][c.R_PATH].endswith("20-gpu-health")
    assert "Xid 79" in failed[0][c.R_OUTPUT] and "demo-not-a-real-key" not in failed[0][c.R_OUTPUT]
    task = [r for r in recs if r[c.R_KIND] == c.K_SCRIPT_ENDED and r.get(c.R_EXPORTED)]
    assert task[0][c.R_EXPORTED] == ["OMP_NUM_THREADS", "HOOKSCOPE_TASK_PROLOG"]
    text = demo.table(recs)
    assert "Prolog error" in text and "20-gpu-health" in text


def test_demo_main_prints_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "hash chain seq 1.." in out and "intact" in out
