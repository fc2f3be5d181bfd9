"""deploy/slurm/slurm.conf.example is the test cluster's own slurm.conf: keep
them from drifting apart (pure; needs neither root nor Slurm)."""

from pathlib import Path

from tests.slurm.cluster import SlurmCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "slurm.conf.example"
HOOK = "/opt/hookscope/bin/hookscope-hook"


def _lines(text):
    return sorted(line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#"))


def test_example_matches_generated_conf():
    c = SlurmCluster("@ROOT@", node="@NODE@")
    c.ctld_port, c.slurmd_port = "@CTLD_PORT@", "@SLURMD_PORT@"
    c.hooks = {p: HOOK for p in ("Prolog", "Epilog", "PrologSlurmctld", "EpilogSlurmctld", "TaskProlog")}
    assert _lines(EXAMPLE.read_text()) == _lines(c.conf_text())
