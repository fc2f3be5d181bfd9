"""Issue 5, real-Slurm tier: real drains, explained by the real pipeline.

Each test induces a hook failure on the real cluster, checks what an SRE sees
in Slurm (``sinfo -R``: ``Prolog error`` / ``Epilog error``), then runs the
pipeline exactly as a site would, as separate processes and with nothing else
in between:

    hookscope agent --once --nats URL --journal J     (node journal -> JetStream)
    hookscope collect --once --nats URL --db F        (JetStream -> DuckDB)
    hookscope why NODE --json --db F                  (the root cause)

and expects ``why`` to name the script, its exit status and its output.
Where plain Slurm fails the same way, the test also runs the bare scripts and
expects the same Slurm outcome (parity, as in test_slurm_hooks.py).
"""

import time

import pytest

from emitter import contract as C

from tests.slurm.scenario import PROLOG_EPILOG_TIMEOUT, RUNNER_BUDGET_S, kinds

pytestmark = pytest.mark.slurm

PROLOG_ERROR = C.DRAIN_REASON["prolog_slurmd"]
EPILOG_ERROR = C.DRAIN_REASON["epilog_slurmd"]
JOB = "#!/bin/sh\necho job-ran\n"

def wait_hook_ended(sc, context, timeout=20):
    """The journal records of ``context``'s finished hook run."""
    deadline = time.monotonic() + timeout
    while True:
        for recs in sc.hooks().get(context, []):
            if kinds(recs, C.K_HOOK_ENDED):
                return recs
        if time.monotonic() > deadline:
            pytest.fail(f"no finished {context} hook run in {sc.journal_dir}: {sorted(sc.hooks())}")
        time.sleep(0.05)


def drained_with(cluster, job, reason):
    """Wait for the drain; check sinfo -R and the job's fate; return node info."""
    node = cluster.wait_drained(timeout=PROLOG_EPILOG_TIMEOUT + 30)
    info = cluster.wait_job_settled(job)
    assert node["Reason"] == reason, node
    assert cluster.drain_reasons() == [reason]
    if reason == PROLOG_ERROR:
        assert info["JobState"] == "PENDING" and "held" in info["Reason"], info
        assert "job-ran" not in cluster.job_output(job)
    else:
        assert info["JobState"] == "COMPLETED", info  # the job ran; the node drains after it
        assert "job-ran" in cluster.job_output(job)
    return node


def assert_cause(why, cluster, sc, job, context, script, exit_code=None, output=None, timed_out=False):
    assert why["node"] == cluster.node
    cause = why["cause"]
    assert cause is not None, f"why found no hook failure: {why}"
    assert cause["context"] == context, cause
    # what why says Slurm did is what sinfo -R showed
    assert cause.get("drain_reason") == C.DRAIN_REASON[context] == cluster.drain_reasons()[0], cause
    assert cause["script"] == str(sc.path(context, script)), cause
    assert str(cause["job_id"]) == str(job), cause
    assert cause["user"] == "root", cause
    assert bool(cause["timed_out"]) is timed_out, cause
    if exit_code is not None:
        assert cause["exit_code"] == exit_code, cause
    if output is not None:
        assert output in (cause["output"] or ""), cause
    assert script in why["verdict"], why["verdict"]
    for key in ("sha256", "signal", "time", "systemic", "regression", "gpu", "evidence"):
        assert key in cause or key in why, key


@pytest.mark.parametrize("mode", ("bare", "hookscope"))
def test_prolog_exits_nonzero(deploy, cluster, request, mode):
    sc = deploy(mode, {"prolog_slurmd": {
        "10-ok": "exit 0\n",
        "20-scratch": "echo '/scratch is 100% full on this node' >&2\nexit 2\n"}})
    job = cluster.sbatch(JOB)
    drained_with(cluster, job, PROLOG_ERROR)
    if mode == "bare":
        return
    wait_hook_ended(sc, "prolog_slurmd")
    why = request.getfixturevalue("pipeline")(sc.journal_dir, cluster.node)
    assert_cause(why, cluster, sc, job, "prolog_slurmd", "20-scratch", exit_code=2,
                 output="/scratch is 100% full on this node")


def test_prolog_hangs_past_budget(deploy, cluster, pipeline):
    sc = deploy("hookscope", {"prolog_slurmd": {"10-mount": "echo 'waiting for nfs mount'\n/bin/sleep 319\n"}})
    job = cluster.sbatch(JOB)
    drained_with(cluster, job, PROLOG_ERROR)
    recs = wait_hook_ended(sc, "prolog_slurmd")
    ended = kinds(recs, C.K_SCRIPT_ENDED)[0]
    assert ended[C.R_DURATION_NS] < PROLOG_EPILOG_TIMEOUT * 1e9 and ended[C.R_TIMED_OUT]
    why = pipeline(sc.journal_dir, cluster.node)
    assert_cause(why, cluster, sc, job, "prolog_slurmd", "10-mount", exit_code=ended[C.R_EXIT],
                 output="waiting for nfs mount", timed_out=True)
    assert ended[C.R_DURATION_NS] >= RUNNER_BUDGET_S * 1e9


@pytest.mark.parametrize("mode", ("bare", "hookscope"))
def test_epilog_fails(deploy, cluster, request, mode):
    sc = deploy(mode, {"epilog_slurmd": {
        "10-cleanup": "echo 'cannot unmount /tmp/job: device busy' >&2\nexit 5\n"}})
    job = cluster.sbatch(JOB)
    drained_with(cluster, job, EPILOG_ERROR)
    if mode == "bare":
        return
    wait_hook_ended(sc, "epilog_slurmd")
    why = request.getfixturevalue("pipeline")(sc.journal_dir, cluster.node)
    assert_cause(why, cluster, sc, job, "epilog_slurmd", "10-cleanup", exit_code=5,
                 output="cannot unmount /tmp/job: device busy")


@pytest.mark.parametrize("mode", ("bare", "hookscope"))
def test_script_not_executable(deploy, cluster, request, mode):
    # Slurm's glob runs the match anyway; exec fails and the prolog fails (127).
    sc = deploy(mode, {"prolog_slurmd": {"30-noexec": ("exit 0\n", 0o644)}})
    mark = cluster.log_size("slurmd")
    job = cluster.sbatch(JOB)
    drained_with(cluster, job, PROLOG_ERROR)
    log = cluster.log_since("slurmd", mark)
    if mode == "bare":
        # slurmd 22.05: "prolog didn't run: status:127 ... [job N] prolog failed status=0:0"
        assert "30-noexec) Permission denied" in log and "status:127" in log, log
        return
    assert f"[job {job}] prolog failed status=127:0" in log, log
    wait_hook_ended(sc, "prolog_slurmd")
    why = request.getfixturevalue("pipeline")(sc.journal_dir, cluster.node)
    assert_cause(why, cluster, sc, job, "prolog_slurmd", "30-noexec", exit_code=127)


@pytest.mark.parametrize("mode", ("bare", "hookscope"))
def test_script_unsafe_permissions_run_and_recorded(deploy, cluster, mode):
    """Issue 11: by default hookscope runs what slurmd runs.  A group-writable
    script runs in both modes (job COMPLETED, node IDLE); under hookscope the
    journal records the unsafe mode as a finding instead of refusing it."""
    sc = deploy(mode, {"prolog_slurmd": {"40-groupw": ("exit 0\n", 0o775)}})
    job = cluster.sbatch(JOB)
    info = cluster.wait_job_settled(job)
    assert info["JobState"] == "COMPLETED", info
    assert cluster.wait_node({"IDLE"})["State"] == "IDLE"
    assert cluster.drain_reasons() == []
    assert [r[2] for r in sc.ran() if r[0] == "prolog_slurmd"] == ["40-groupw"]
    if mode == "bare":
        return
    recs = wait_hook_ended(sc, "prolog_slurmd")
    started = kinds(recs, C.K_SCRIPT_STARTED)[0]
    hook = kinds(recs, C.K_HOOK_STARTED)[0]
    assert any("group" in f for f in started.get(C.R_FINDINGS) or []), \
        f"script_started findings: {started.get(C.R_FINDINGS)!r}; hook_started warnings: {hook.get(C.R_WARNINGS)!r}"
    assert any(w.startswith(C.FINDING_PREFIX) and "40-groupw" in w for w in hook.get(C.R_WARNINGS) or []), \
        f"hook_started warnings: {hook.get(C.R_WARNINGS)!r}"
    assert kinds(recs, C.K_SCRIPT_ENDED)[0][C.R_EXIT] == 0


def test_script_unsafe_permissions_enforced(deploy, cluster, pipeline):
    # Refusing stays an opt-in knob (runner.strict = "enforce"): plain Slurm
    # would run a group-writable script as root; enforcement refuses it, which
    # fails the prolog like any failing script.
    sc = deploy("hookscope", {"prolog_slurmd": {"40-groupw": ("exit 0\n", 0o775)}},
                runner_extra={"strict": "enforce"})
    job = cluster.sbatch(JOB)
    drained_with(cluster, job, PROLOG_ERROR)
    recs = wait_hook_ended(sc, "prolog_slurmd")
    ended = kinds(recs, C.K_SCRIPT_ENDED)[0]
    assert ended[C.R_REFUSED] and "40-groupw" in ended[C.R_REFUSED] and "group" in ended[C.R_REFUSED]
    assert sc.ran() == [r for r in sc.ran() if r[0] != "prolog_slurmd"], "a refused script never runs"
    why = pipeline(sc.journal_dir, cluster.node)
    assert_cause(why, cluster, sc, job, "prolog_slurmd", "40-groupw", exit_code=ended[C.R_EXIT])
    assert why["cause"].get("refused") or "refused" in why["verdict"], why
