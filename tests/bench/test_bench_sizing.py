"""tests/bench/bench_sizing.py runs as shipped (at a tiny scale) and its
measured figures are the collector's own: rows per message match what the
generators put in, every table the workload feeds has bytes."""
from tests.bench import bench_sizing


def test_sizing_runs_and_counts_rows(tmp_path, capsys):
    a = bench_sizing.options(["--sim-nodes", "1", "--sim-hours", "2", "--sim-gpu-hours", "0.05",
                              "--tasks-per-node", "2", "--out", str(tmp_path)])
    m = bench_sizing.measure(a, str(tmp_path))
    # 2 jobs (1 h each): prolog + epilog + 2 tasks x (TaskProlog + TaskEpilog) + 2 slurmctld hooks
    assert m["msgs"]["hook"] == 2 * (2 + 4 + 2)
    assert m["rows"]["hook"]["hook_runs"] == m["msgs"]["hook"]
    assert m["rows"]["gpu"]["gpu_samples"] == 8 * m["msgs"]["gpu"] == 8 * 18
    assert m["rows"]["hook"]["raw"] == m["msgs"]["hook"]
    for k, t in (("hook", "hook_runs"), ("hook", "script_runs"), ("hook", "journal"), ("gpu", "gpu_samples")):
        assert m["compacted"][k][t] > 0, (k, t)
    bench_sizing.report(a, m)
    out = capsys.readouterr().out
    assert "| archive/year, compacted |" in out and "4,096 nodes" in out
