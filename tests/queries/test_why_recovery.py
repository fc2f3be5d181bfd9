"""Slurm runs a job's Epilog even when its Prolog failed: that is no recovery."""

from datetime import datetime, timedelta, timezone

from tests.queries.builder import StoreBuilder, script

from queries.source import open_source
from queries.why import why

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
GPU = "/etc/slurm/prolog.d/20-gpu"
CLEAN = "/etc/slurm/epilog.d/10-clean"


def _why(tmp_path, build):
    b = StoreBuilder()
    build(b)
    con = open_source(db=b.write_db(tmp_path / "h.duckdb"), quiet=True)
    try:
        return why(con, "n1")
    finally:
        con.close()


def test_epilog_of_the_failed_job_is_not_a_recovery(tmp_path):
    def build(b):
        b.hook("n1", T0, "prolog_slurmd", 7, "ann", [script(GPU, exit_code=2, output="Xid 79")])
        b.hook("n1", T0 + timedelta(seconds=1), "epilog_slurmd", 7, "ann", [script(CLEAN)])
    d = _why(tmp_path, build)
    assert d["cause"]["script"] == GPU and d["recovered"] is False
    assert "succeeded since" not in d["verdict"]


def test_same_context_for_a_later_job_is_a_recovery(tmp_path):
    def build(b):
        b.hook("n1", T0, "prolog_slurmd", 7, "ann", [script(GPU, exit_code=2, output="Xid 79")])
        b.hook("n1", T0 + timedelta(seconds=1), "epilog_slurmd", 7, "ann", [script(CLEAN)])
        b.hook("n1", T0 + timedelta(hours=1), "prolog_slurmd", 8, "bob", [script(GPU)])
    d = _why(tmp_path, build)
    assert d["recovered"] is True and "succeeded since" in d["verdict"]
