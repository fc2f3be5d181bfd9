"""make demo: the example hooks run through the runner and are journaled."""

from pathlib import Path

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


# ---------------------------------------------------------------- GPU replay timeline (make demo's GPUs)
def _timeline(tmp_path, rounds, **kw):
    import json

    from emitter.gpu.replay import ReplayBackend

    p = tmp_path / "t.json"
    rec = Path(demo.__file__).resolve().parent / "fixtures" / "gpu" / "nvidia-smi-q-x-8xH100.xml"
    p.write_text(json.dumps({"hookscope_replay_timeline": 1, "recording": str(rec), "rounds": rounds, **kw}))
    b = ReplayBackend(str(p))
    b.open()
    return b


def test_replay_timeline_rounds_accumulate_and_the_last_holds(tmp_path):
    b = _timeline(tmp_path, [{"0": {c.M_GPU_UTILIZATION: 0.1}}, {"1": {c.M_GPU_XID: 79}},
                             {"0": {c.M_GPU_POWER: None}}])
    first = b.sample()
    assert first[0].metrics[c.M_GPU_UTILIZATION] == 0.1 and first[1].metrics[c.M_GPU_XID] == 0
    second = b.sample()
    assert second[1].metrics[c.M_GPU_XID] == 79 and second[0].metrics[c.M_GPU_UTILIZATION] == 0.1
    for _ in range(3):
        last = b.sample()
        assert last[0].metrics[c.M_GPU_POWER] is None and last[1].metrics[c.M_GPU_XID] == 79
    assert last[2].metrics == first[2].metrics  # untouched GPUs replay the recording


def test_replay_timeline_follows_the_wall_clock(tmp_path):
    import time

    b = _timeline(tmp_path, [{"0": {c.M_GPU_XID: 0}}, {"0": {c.M_GPU_XID: 43}}],
                  start=time.time() - 1.5, step_s=1.0)
    assert b.sample()[0].metrics[c.M_GPU_XID] == 43
    b = _timeline(tmp_path, [{"0": {c.M_GPU_XID: 13}}, {"0": {c.M_GPU_XID: 43}}],
                  start=time.time() + 3600, step_s=1.0)
    assert b.sample()[0].metrics[c.M_GPU_XID] == 13  # round 0 holds before the start


def test_replay_timeline_errors_name_the_round(tmp_path):
    import pytest

    from emitter.gpu.base import GpuError

    for rounds, says in (([{"9": {c.M_GPU_XID: 1}}], "round 0 names GPU '9'"),
                         ([{}, {"0": {"hw.gpu.bogus": 1}}], "round 1 GPU 0: hw.gpu.bogus"),
                         ([{"0": {c.M_GPU_XID: "x"}}], "is not a number")):
        with pytest.raises(GpuError, match=says.replace(".", r"\.")):
            _timeline(tmp_path, rounds)


def test_demo_gpu_timeline_puts_the_events_where_the_story_needs_them():
    from dashboards import demo as pipeline

    t = pipeline.gpu_timeline("node003", 0.0)["rounds"]
    prolog_1002 = next(on for j, _, on, _, _ in pipeline.JOBS if j == "1002")
    xid_round = next(i for i, r in enumerate(t) if r["0"].get(c.M_GPU_XID) == 79)
    assert xid_round <= prolog_1002 < xid_round + 1  # the health check sees the XID
    busy = [r["0"][c.M_GPU_UTILIZATION] for r in t[:xid_round]]
    assert sum(u > 0.5 for u in busy) >= 6  # job 1001 ran there first: a curve, not a dot
    assert all(r["0"][c.M_GPU_UTILIZATION] is None for r in t[xid_round + 1:])  # off the bus
