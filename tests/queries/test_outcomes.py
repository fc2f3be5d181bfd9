"""Issue 16 against both sources: what each hook failure did to the job and the
node (``why job J``), boot-time init runs, stale script versions and prolog
timing.  One abstract class, run on the DuckDB store and on the (twice
written) Parquet archive, over queries_scenario.add_outcomes."""

import pytest
from tests.queries.queries_scenario import ACCT, GDR, IB, NCCL, OFED, QUOTA, SCRATCH, SRUNP, TASKP

from emitter import contract as C
from queries.audit import audit_job, audit_script
from queries.drains import drains
from queries.jobwhy import NoSuchJob, render_job, why_job
from queries.outcomes import consequence, nohold_setting
from queries.source import open_source
from queries.why import why

LAUNCH_HELD = "launch failed requeued held"


# ------------------------------------------------------------ pure: the contract's consequences
def test_every_context_has_a_consequence_in_slurms_words():
    assert set(C.CONSEQUENCE) == set(C.CONTEXTS)
    assert set(C.INIT_CONTEXTS) <= set(C.CONTEXTS)
    p = consequence("prolog_slurmd", "batch", nohold=False)
    assert (p["node"], p["drain_reason"], p["job"], p["reason"]) == ("DRAIN", "Prolog error", "requeued held",
                                                                     LAUNCH_HELD)
    assert p["inferred"] == []
    assert consequence("prolog_slurmd", "batch", nohold=True)["job"] == "requeued"
    assert consequence("prolog_slurmd", "batch", nohold=True)["reason"] is None
    unknown = consequence("prolog_slurmd")
    assert unknown["job"] == "requeued held" and len(unknown["inferred"]) == 2  # batch? nohold?
    assert consequence("prolog_slurmctld", "batch")["job"] == "requeued"
    assert consequence("prolog_slurmctld", "interactive")["job"] == "cancelled"
    assert consequence("epilog_slurmd")["drain_reason"] == "Epilog error"
    assert "only logs" in consequence("epilog_slurmctld")["text"]
    for ctx in ("epilog_task", "epilog_srun"):
        assert consequence(ctx)["job"] is None and "only logs" in consequence(ctx)["text"]
    assert consequence("prolog_task")["text"] == "the task is cancelled"
    assert consequence("prolog_srun")["text"] == "the step is cancelled"
    assert "not told" in consequence("init_worker")["text"]


def test_nohold_setting_reads_scheduler_parameters():
    assert nohold_setting(None) is None
    assert nohold_setting("bf_continue,nohold_on_prolog_fail") is True
    assert nohold_setting("bf_continue,default_queue_depth=10") is False


class OutcomeContract:
    @pytest.fixture
    def con(self):
        raise NotImplementedError

    # -------------------------------------------------------- why job
    def test_prolog_failure_requeued_then_retry_elsewhere(self, con):
        d = why_job(con, 5001)
        dec = d["decided_by"]
        assert (dec["context"], dec["hook"], dec["node"], dec["script"], dec["exit_code"]) == (
            "prolog_slurmd", "Prolog", "pj01", IB, 4)
        assert dec["sha256"] and "ib0: link down" in dec["output"]
        assert d["elsewhere"]["fault"] == "node" and d["elsewhere"]["failed_count"] == 0
        assert d["retry"]["ran"] and d["retry"]["attempt"] == 1 and d["retry"]["nodes"] == ["ctl", "pj02"]
        assert d["retry"]["failed_hooks"] == 0
        assert d["outcome"]["kind"]["value"] == "batch" and d["outcome"]["node"] == "DRAIN"
        assert any("released" in x for x in d["outcome"]["inferred"])
        v = d["verdict"]
        for s in ("Prolog on pj01", IB, dec["sha256"][:12], "exited 4", "'Prolog error'", "restart count 1",
                  "all succeeded", "failed nowhere else", "10-ofed.sh exited 1"):
            assert s in v, (s, v)
        assert d["init"]["failed"] and d["init"]["script"] == OFED
        assert [a["attempt"] for a in d["attempts"]] == [0, 1]

    def test_prolog_failure_without_retry_stays_held(self, con):
        d = why_job(con, 5010)
        o = d["outcome"]
        assert (o["job"], o["reason"]) == ("requeued held", LAUNCH_HELD)
        assert d["retry"] == {"attempt": None, "ran": False}
        assert "scontrol release 5010" in d["verdict"] and LAUNCH_HELD in d["verdict"]
        assert any("nohold_on_prolog_fail" in x for x in o["inferred"]) and "inferred:" in d["verdict"]
        # the node never ran its init script although its peers did
        assert d["init"]["ran"] is False and d["init"]["peers_with_init"] >= 2
        assert "no boot-time init run" in d["verdict"] and GDR in d["verdict"]

    def test_prolog_failure_not_requeued_is_interactive_cancelled(self, con):
        d = why_job(con, 5011)
        o = d["outcome"]
        assert (o["job"], o["reason"], o["node"]) == ("cancelled", None, "DRAIN")
        assert o["kind"]["value"] == "interactive" and any("restart count" in x for x in o["inferred"])
        assert "the job is cancelled" in d["verdict"] and "inferred:" in d["verdict"]

    def test_site_settings_replace_the_assumption(self, con):
        d = why_job(con, 5010, scheduler_parameters="bf_continue,nohold_on_prolog_fail")
        assert d["outcome"]["job"] == "requeued" and d["outcome"]["reason"] is None
        assert not any("nohold" in x for x in d["outcome"]["inferred"])
        assert LAUNCH_HELD not in d["verdict"]

    def test_prolog_slurmctld_cancelled_when_no_retry(self, con):
        d = why_job(con, 5002)
        assert d["decided_by"]["hook"] == "PrologSlurmctld" and d["decided_by"]["node"] == "ctl"
        assert d["decided_by"]["script"] == QUOTA and "over its GPU-hours" in d["decided_by"]["output"]
        assert d["outcome"]["job"] == "cancelled" and d["outcome"]["node"] is None
        assert "interactive" in d["outcome"]["inferred"][0]
        assert "PrologSlurmctld failed, job killed" in d["verdict"]
        assert d["init"] is None  # the controller has no boot-time init context

    def test_prolog_slurmctld_batch_requeued(self, con):
        d = why_job(con, 5003)
        assert d["outcome"]["job"] == "requeued" and d["outcome"]["kind"]["value"] == "batch"
        assert d["retry"]["ran"] and d["retry"]["failed_hooks"] == 0
        assert "the job is requeued" in d["verdict"] and "restart count 1" in d["verdict"]

    def test_step_task_and_logged_only(self, con):
        srun = why_job(con, 5004)
        assert srun["decided_by"]["hook"] == "SrunProlog" and srun["decided_by"]["node"] == "login01"
        assert srun["decided_by"]["script"] == SRUNP and "the step is cancelled" in srun["verdict"]
        task = why_job(con, 5005)
        assert task["decided_by"]["script"] == TASKP and "the task is cancelled" in task["verdict"]
        ep = why_job(con, 5006)
        assert ep["decided_by"]["script"] == ACCT and ep["outcome"]["scope"] == "logged"
        assert "Slurm only logs it" in ep["verdict"]

    def test_stale_version_named_in_why_job_and_why_node(self, con):
        d = why_job(con, 5007)
        assert len(d["stale"]) == 1
        s = d["stale"][0]
        assert (s["node"], s["path"], s["nodes_on_current"]) == ("st04", NCCL, 3)
        assert s["sha256"] == d["decided_by"]["sha256"] and s["current_sha256"] != s["sha256"]
        assert s["lag_s"] == pytest.approx(7200.0) and s["lag"] == "2.0 h"
        assert s["sha256"][:12] in d["verdict"] and s["current_sha256"][:12] in d["verdict"]
        n = why(con, "st04")
        assert n["stale"] and n["stale"][0]["current_sha256"] == s["current_sha256"]
        assert "lagging 2.0 h" in n["verdict"]
        # a peer that has the current version is not stale
        assert why(con, "st01")["stale"] == []

    def test_audit_script_names_stale_nodes_not_canaries(self, con):
        a = audit_script(con, NCCL)
        assert [r["node"] for r in a["stale"]] == ["st04"]
        # 20-gpu.sh's hotfix ran on 5 of many nodes: a canary, nobody lags behind it
        from tests.queries.queries_scenario import GPU
        assert audit_script(con, GPU)["stale"] == []

    def test_prolog_timing_first_step_delay(self, con):
        d = why_job(con, 5008)
        (t,) = d["prolog_timing"]
        assert t["at"] == "first_step" and t["how"] == "inferred" and t["delays_step"]
        assert t["after_allocation_s"] == pytest.approx(600.0)
        assert "first step" in d["verdict"] and "PrologFlags=Alloc" in d["verdict"]
        (a,) = why_job(con, 5009)["prolog_timing"]
        assert a["at"] == "allocation" and not a["delays_step"]
        (r,) = why_job(con, 5008, prolog_flags="Alloc,Contain")["prolog_timing"]
        assert r["at"] == "allocation" and r["how"] == "read"

    def test_clean_job_and_unknown_job(self, con):
        d = why_job(con, 1001)
        assert d["decided_by"] is None and d["outcome"] is None and "succeeded" in d["verdict"]
        with pytest.raises(NoSuchJob, match="no-such"):
            why_job(con, "no-such")
        assert render_job(why_job(con, 5001)).startswith("Job 5001")

    # -------------------------------------------------------- why NODE, drains, audit
    def test_why_node_names_consequence_and_failed_init(self, con):
        d = why(con, "pj01")
        assert d["cause"]["consequence"]["job"] == "requeued held"
        assert d["init"]["failed"] and "10-ofed.sh exited 1" in d["verdict"]
        f = why(con, "fail01")
        assert f["init"] is None or f["init"]["ran"] is False  # init runs came later than its failure
        assert "launch failed requeued held" in f["verdict"] and f["cause"]["script"] == SCRATCH

    def test_drains_and_audit_carry_the_consequence(self, con):
        by = {(r["context"], r["script"]): r for r in drains(con)}
        for script in (GDR, NCCL):
            assert "'Prolog error'" in by[("prolog_slurmd", script)]["consequence"]
            assert LAUNCH_HELD in by[("prolog_slurmd", script)]["consequence"]
        rows = audit_job(con, 5002)
        bad = [r for r in rows if r["failed"]]
        assert bad and all(r["consequence"] for r in bad)
        assert all(r["consequence"] is None for r in rows if not r["failed"])


class TestDuckDBOutcomes(OutcomeContract):
    @pytest.fixture
    def con(self, scenario_db):
        c = open_source(db=scenario_db)
        yield c
        c.close()


class TestArchiveOutcomes(OutcomeContract):
    @pytest.fixture
    def con(self, scenario_archive):
        c = open_source(archive=scenario_archive)
        yield c
        c.close()


# ------------------------------------------------------------ the CLI
def test_cli_why_job_text_json_and_settings(scenario_db, scenario_archive, monkeypatch):
    import json

    from click.testing import CliRunner

    from queries.cli import audit, why as why_cmd

    def run(args, code=0):
        res = CliRunner().invoke(why_cmd, args, catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res.output

    out = run(["job", "5001", "--archive", scenario_archive])
    assert out.startswith("Job 5001") and "decided by:" in out and IB in out and "runs:" in out
    d = json.loads(run(["job", "5010", "--db", scenario_db, "--json"]))
    assert d["outcome"]["job"] == "requeued held" and d["decided_by"]["node"] == "noinit01"
    monkeypatch.setenv("HOOKSCOPE_SCHEDULER_PARAMETERS", "nohold_on_prolog_fail")
    d = json.loads(run(["job", "5010", "--db", scenario_db, "--json"]))
    assert d["outcome"]["job"] == "requeued" and d["settings"]["scheduler_parameters"] == "nohold_on_prolog_fail"
    assert "no hook run of job 424242" in run(["job", "424242", "--db", scenario_db], code=1)
    assert "not 'n1' '5'" in run(["n1", "5", "--db", scenario_db], code=2)
    res = CliRunner().invoke(audit, ["script", NCCL, "--db", scenario_db], catch_exceptions=False)
    assert "stale: st04 still runs" in res.output and "lagging 2.0 h" in res.output


def test_epilogs_counted_after_the_requeue_are_not_a_retry(tmp_path):
    """slurmctld counts the requeue before the failed run's Epilog and
    EpilogSlurmctld: they carry restart count 1 (seen on the real daemons),
    and are no retry of the held job."""
    from datetime import timedelta

    from tests.queries.builder import T0, StoreBuilder, script

    b = StoreBuilder()
    s = timedelta(seconds=1)
    b.hook("ctl", T0, "prolog_slurmctld", 9, "ann", [script(QUOTA)], restart_count=0)
    b.hook("n1", T0 + s, "prolog_slurmd", 9, "ann", [script(IB, exit_code=4, output="ib0 down")], restart_count=0)
    b.hook("n1", T0 + 2 * s, "epilog_slurmd", 9, "ann", [script(ACCT)], restart_count=1)
    b.hook("ctl", T0 + 3 * s, "epilog_slurmctld", 9, "ann", [script(ACCT)], restart_count=1)
    con = open_source(db=b.write_db(tmp_path / "h.duckdb"), quiet=True)
    try:
        d = why_job(con, 9)
    finally:
        con.close()
    assert [a["attempt"] for a in d["attempts"]] == [0]
    assert d["retry"] == {"attempt": None, "ran": False}
    assert d["outcome"]["job"] == "requeued held" and d["outcome"]["reason"] == LAUNCH_HELD
    assert d["outcome"]["kind"]["value"] == "batch"  # only batch jobs are requeued
    assert "scontrol release 9" in d["verdict"]


def test_prolog_failure_of_an_srun_job_is_cancelled_inferred(tmp_path):
    """A batch script never starts when its Prolog fails: an srun that got as
    far as its SrunProlog came from outside (salloc/srun), so the job is an
    interactive one, and it is cancelled, not requeued (inferred, and said)."""
    from datetime import timedelta

    from tests.queries.builder import T0, StoreBuilder, script

    b = StoreBuilder()
    s = timedelta(seconds=1)
    b.hook("ctl", T0, "prolog_slurmctld", 11, "ann", [script(QUOTA)])
    b.hook("login1", T0 + s, "prolog_srun", 11, "ann", [script(SRUNP)])
    b.hook("n1", T0 + 2 * s, "prolog_slurmd", 11, "ann", [script(IB, exit_code=4, output="ib0 down")])
    con = open_source(db=b.write_db(tmp_path / "h.duckdb"), quiet=True)
    try:
        d = why_job(con, 11)
    finally:
        con.close()
    o = d["outcome"]
    assert o["job"] == "cancelled" and o["reason"] is None and o["kind"]["value"] == "interactive"
    assert any("SrunProlog" in x for x in o["inferred"]) and "inferred:" in d["verdict"]
    assert not any("nohold" in x for x in o["inferred"])
