"""Issue 2, real-Slurm tier: hookscope-hook in every slot behaves exactly like
the bare scripts, as Slurm itself sees it, and leaves the records.

Each scenario is ONE test parametrized over mode: the same scripts deployed
bare (slurm.conf names them) and under hookscope-hook (slurm.conf names the
runner, the runner's config names the directories).  The assertions on Slurm's
observable outcome (node state and reason, job state, job output, which
scripts ran in what order) are shared; only the journal checks are per mode.
"""

import time

import pytest

from emitter import contract as C

from tests.helpers import wait_for as poll
from tests.slurm.scenario import (CONTEXT_PARAM, PROLOG_EPILOG_TIMEOUT, RUNNER_BUDGET_S,
                                  check_chain, kinds, launcher_problem, system_python_launcher)
from tests.tiers import require

pytestmark = pytest.mark.slurm

MODES = ("bare", "hookscope")
ALL_CONTEXTS = tuple(CONTEXT_PARAM)
PROLOG_ERROR = C.DRAIN_REASON["prolog_slurmd"]

JOB = "#!/bin/sh\necho job-ran\necho HS_TASK_VAR=${HS_TASK_VAR:-unset}\n"


def hook_runs_done(sc, contexts):
    """context -> records of its (single) finished hook run, once all are there."""
    hooks = sc.hooks()
    out = {}
    for ctx in contexts:
        runs = [r for r in hooks.get(ctx, []) if kinds(r, C.K_HOOK_ENDED)]
        if len(runs) != 1:
            return None
        out[ctx] = runs[0]
    return out


def one(recs, kind):
    got = kinds(recs, kind)
    assert len(got) == 1, f"expected one {kind}, got {len(got)}: {got}"
    return got[0]


def test_cluster_runs_plain_job(cluster):
    """The cluster itself (no hooks of ours): a job runs and completes."""
    cluster.set_hooks()
    job = cluster.sbatch("#!/bin/sh\necho plain\n", name="plain")
    info = cluster.wait_job_settled(job)
    assert info["JobState"] == "COMPLETED", info
    assert cluster.job_output(job, name="plain").strip() == "plain"


@pytest.mark.parametrize("mode", MODES)
def test_good_job_every_context(deploy, cluster, mode):
    sc = deploy(mode)
    job = cluster.sbatch(JOB)
    info = cluster.wait_job_settled(job)
    # --- what Slurm shows, identical in both modes
    assert info["JobState"] == "COMPLETED", info
    assert info["ExitCode"] == "0:0", info
    # exactly the job's own output: the runner adds nothing to it
    assert cluster.job_output(job) == "job-ran\nHS_TASK_VAR=unset\n"
    node = cluster.wait_node({"IDLE"})
    assert node["State"] == "IDLE", node
    assert cluster.drain_reasons() == []
    want = {(ctx, str(job), "50-ok") for ctx in ALL_CONTEXTS}
    ran = poll(lambda: set(sc.ran()) >= want and sc.ran(), 15,
               lambda: f"every context to run for job {job}; ran: {sc.ran()}")
    assert sorted(ran) == sorted(want), "each context ran its script exactly once"
    if mode == "bare":
        assert not sc.journal_dir.exists()
        return
    # --- the records: every context, the right job, status 0, one chain
    runs = poll(lambda: hook_runs_done(sc, ALL_CONTEXTS), 15,
                lambda: f"a finished hook run per context; have {sorted(sc.hooks())}")
    for ctx, recs in runs.items():
        started = one(recs, C.K_HOOK_STARTED)
        assert started[C.R_JOB]["job_id"] == str(job), (ctx, started)
        assert started[C.R_NODE] == cluster.node
        assert started[C.R_CLUSTER] == cluster.cluster_name
        assert one(recs, C.K_HOOK_ENDED)[C.R_STATUS] == 0, ctx
        s_start, s_end = one(recs, C.K_SCRIPT_STARTED), one(recs, C.K_SCRIPT_ENDED)
        assert s_start[C.R_PATH] == s_end[C.R_PATH] == str(sc.path(ctx, "50-ok"))
        assert s_end[C.R_EXIT] == 0 and not s_end[C.R_TIMED_OUT]
        assert s_start[C.R_SEQ] < s_end[C.R_SEQ]
    check_chain(sc.records())
    assert sc.journal_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", MODES)
def test_failing_prolog_drains_and_holds(deploy, cluster, mode):
    sc = deploy(mode, {"prolog_slurmd": {
        "10-runs-last": "exit 0\n",
        "20-gpu-check": "echo 'gpu0: XID 79, fallen off the bus' >&2\nexit 3\n",
    }})
    mark = cluster.log_size("slurmd")
    job = cluster.sbatch(JOB)
    node = cluster.wait_drained()
    info = cluster.wait_job_settled(job)
    # --- what Slurm shows, identical in both modes
    assert node["Reason"] == PROLOG_ERROR, node
    assert cluster.drain_reasons() == [PROLOG_ERROR]
    assert info["JobState"] == "PENDING" and "held" in info["Reason"], info
    assert "job-ran" not in cluster.job_output(job)
    # slurmd's reverse glob order, stop at the first failure: 10-runs-last never ran
    assert [r for r in sc.ran() if r[0] == "prolog_slurmd"] == [("prolog_slurmd", str(job), "20-gpu-check")]
    slurmd_log = cluster.log_since("slurmd", mark)
    assert f"[job {job}] prolog failed status=3:0" in slurmd_log
    assert "XID 79, fallen off the bus" in slurmd_log, "slurmd logs the failing output in both modes"
    if mode == "bare":
        return
    runs = poll(lambda: hook_runs_done(sc, ["prolog_slurmd"]), 15, "the prolog's hook_ended record")
    recs = runs["prolog_slurmd"]
    assert one(recs, C.K_HOOK_STARTED)[C.R_JOB]["job_id"] == str(job)
    ended = one(recs, C.K_SCRIPT_ENDED)
    assert ended[C.R_PATH] == str(sc.path("prolog_slurmd", "20-gpu-check"))
    assert ended[C.R_EXIT] == 3 and ended[C.R_SIGNAL] is None and not ended[C.R_TIMED_OUT]
    assert "XID 79, fallen off the bus" in ended[C.R_OUTPUT]
    hook_end = one(recs, C.K_HOOK_ENDED)
    assert hook_end[C.R_STATUS] == 3 and hook_end[C.R_FAILED_INDEX] == 0
    assert all(r[C.R_PATH] != str(sc.path("prolog_slurmd", "10-runs-last"))
               for r in kinds(recs, C.K_SCRIPT_STARTED))


@pytest.mark.parametrize("mode", MODES)
def test_empty_prolog_dir(deploy, cluster, mode):
    """slurmd fails a Prolog glob that matches nothing; the runner's slurm
    layout does the same (its empty_ok opt-out is not set here)."""
    sc = deploy(mode, {"prolog_slurmd": {}})
    job = cluster.sbatch(JOB)
    node = cluster.wait_drained()
    info = cluster.wait_job_settled(job)
    assert node["Reason"] == PROLOG_ERROR, node
    assert info["JobState"] == "PENDING" and "held" in info["Reason"], info
    if mode == "bare":
        return
    recs = poll(lambda: hook_runs_done(sc, ["prolog_slurmd"]), 15, "the prolog's hook_ended record")
    end = one(recs["prolog_slurmd"], C.K_HOOK_ENDED)
    assert end[C.R_STATUS] != 0 and end[C.R_N_SCRIPTS] == 0, end


def _sleepers(tag):
    import os
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"/bin/sleep", tag.encode()]:
                        out.append(int(d))
            except OSError:
                pass
    return out


@pytest.mark.parametrize("mode", MODES)
def test_hung_prolog_stopped(deploy, cluster, mode):
    tag = "317" if mode == "bare" else "318"  # a process we can find, per mode
    sc = deploy(mode, {"prolog_slurmd": {"10-hang": f"echo hanging-now\n/bin/sleep {tag}\n"}})
    mark = cluster.log_size("slurmd")
    t0 = time.monotonic()
    job = cluster.sbatch(JOB)
    node = cluster.wait_drained(timeout=PROLOG_EPILOG_TIMEOUT + 30)
    elapsed = time.monotonic() - t0
    info = cluster.wait_job_settled(job)
    # --- what Slurm shows, identical in both modes
    assert node["Reason"] == PROLOG_ERROR, node
    assert info["JobState"] == "PENDING" and "held" in info["Reason"], info
    assert "job-ran" not in cluster.job_output(job)
    assert [r[:2] for r in sc.ran() if r[0] == "prolog_slurmd"] == [("prolog_slurmd", str(job))]
    poll(lambda: not _sleepers(tag), 10, f"the hung script's /bin/sleep {tag} to be gone")
    slurm_timed_out = "prolog poll timeout" in cluster.log_since("slurmd", mark)
    if mode == "bare":
        assert slurm_timed_out, "bare: Slurm's PrologEpilogTimeout stops it"
        assert elapsed >= PROLOG_EPILOG_TIMEOUT - 1
        return
    # --- hookscope: its own budget fired first, and says so
    assert not slurm_timed_out, "the runner's budget must fire before PrologEpilogTimeout"
    assert elapsed < PROLOG_EPILOG_TIMEOUT + 3, elapsed
    runs = poll(lambda: hook_runs_done(sc, ["prolog_slurmd"]), 15, "the prolog's hook_ended record")
    recs = runs["prolog_slurmd"]
    ended = one(recs, C.K_SCRIPT_ENDED)
    assert ended[C.R_PATH] == str(sc.path("prolog_slurmd", "10-hang"))
    assert ended[C.R_TIMED_OUT] is True
    assert ended[C.R_EXIT] != 0
    assert RUNNER_BUDGET_S * 1e9 <= ended[C.R_DURATION_NS] < PROLOG_EPILOG_TIMEOUT * 1e9
    assert "hanging-now" in (ended[C.R_OUTPUT] or "")
    assert one(recs, C.K_HOOK_ENDED)[C.R_STATUS] != 0


@pytest.mark.parametrize("mode", MODES)
def test_task_prolog_export_reaches_job(deploy, cluster, mode):
    sc = deploy(mode, {"prolog_task": {"50-export": (
        "echo 'export HS_TASK_VAR=from-task-prolog'\n"
        "echo 'print task-prolog-printed'\n"
        "echo 'unset HS_UNSET_ME'\n")}})
    job = cluster.sbatch(JOB + "echo HS_UNSET_ME=${HS_UNSET_ME:-gone}\n", "--export=ALL,HS_UNSET_ME=here")
    info = cluster.wait_job_settled(job)
    out = cluster.job_output(job)
    # --- what the job sees, identical in both modes
    assert info["JobState"] == "COMPLETED", info
    assert out == ("task-prolog-printed\njob-ran\nHS_TASK_VAR=from-task-prolog\n"
                   "HS_UNSET_ME=gone\n"), out
    assert [r for r in sc.ran() if r[0] == "prolog_task"] == [("prolog_task", str(job), "50-export")]
    if mode == "bare":
        return
    runs = poll(lambda: hook_runs_done(sc, ["prolog_task"]), 15, "the TaskProlog's hook_ended record")
    recs = runs["prolog_task"]
    assert one(recs, C.K_HOOK_STARTED)[C.R_JOB]["job_id"] == str(job)
    ended = one(recs, C.K_SCRIPT_ENDED)
    assert ended[C.R_EXIT] == 0
    assert "HS_TASK_VAR" in ended[C.R_EXPORTED]
    assert "HS_UNSET_ME" in ended[C.R_UNSET]


def test_job_metadata_every_context(deploy, cluster):
    """Every context's hook_started carries the job as Slurm describes it.

    Slurm does not give every hook the same variables (slurmd's prolog has
    SLURM_NODELIST and SLURM_JOB_RESTART_COUNT, the job has SLURM_JOB_NODELIST
    and SLURM_RESTART_COUNT); the records must agree anyway."""
    sc = deploy("hookscope")
    job = cluster.sbatch(JOB)
    assert cluster.wait_job_settled(job)["JobState"] == "COMPLETED"
    runs = poll(lambda: hook_runs_done(sc, ALL_CONTEXTS), 15,
                lambda: f"a finished hook run per context; have {sorted(sc.hooks())}")
    # No accounting here: slurmctld's hooks get SLURM_JOB_ACCOUNT="(null)",
    # slurmd's none at all; both mean "no account".
    want = {"job_id": str(job), "user": "root", "uid": "0", "partition": "debug",
            "cluster": cluster.cluster_name, "nodelist": cluster.node, "account": None}
    wrong = {}
    for ctx, recs in runs.items():
        md = one(recs, C.K_HOOK_STARTED)[C.R_JOB]
        bad = {k: md.get(k) for k, v in want.items() if md.get(k) != v}
        if bad:
            wrong[ctx] = bad
    assert not wrong, f"job metadata differs from Slurm's ({want}) in: {wrong}"


def test_requeued_job_after_fix_and_resume(deploy, cluster):
    """The SRE's loop on a real drain: a prolog fails (node drained, job
    requeued and held), the script is fixed, the node resumed, the job
    released; it then runs, and its records say it is the job's restart 1,
    so the retry is not mixed up with the failed attempt."""
    sc = deploy("hookscope", {"prolog_slurmd": {"20-check": "exit 4\n"}})
    job = cluster.sbatch(JOB)
    assert cluster.wait_drained()["Reason"] == PROLOG_ERROR
    assert "held" in cluster.wait_job_settled(job)["Reason"]
    fixed = sc.path("prolog_slurmd", "20-check")
    fixed.write_text(fixed.read_text().replace("exit 4", "exit 0"))
    cluster.resume()
    cluster.scontrol("release", str(job))
    # slurmctld delays a requeued job (Reason=BeginTime); the SRE says "now".
    cluster.scontrol("update", f"jobid={job}", "starttime=now")
    info = cluster.wait_job(job, {"COMPLETED"}, timeout=60)
    assert info["Restarts"] == "1", info
    assert "job-ran" in cluster.job_output(job)
    def prolog_runs():
        return [[(r[C.R_KIND], r.get(C.R_STATUS), r.get(C.R_JOB, {}).get("restart_count")) for r in recs]
                for recs in sc.hooks().get("prolog_slurmd", [])]
    # Real Slurm 22.05 sometimes launches a released requeued job without
    # running its prolog again (slurmd still has the job ID in its credential
    # cache: "reissued job credential" then "Launching batch job" at once).
    # Bare scripts are skipped the same way, so that is Slurm's outcome, not
    # ours: then only the failed prolog exists, and the retry is checked in
    # every other context.
    deadline = time.monotonic() + 15
    while True:
        prologs = [r for r in sc.hooks().get("prolog_slurmd", []) if kinds(r, C.K_HOOK_ENDED)]
        if len(prologs) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    statuses = sorted(one(r, C.K_HOOK_ENDED)[C.R_STATUS] for r in prologs)
    assert statuses in ([0, 4], [4]), f"prolog runs: {prolog_runs()}"
    contexts = [c for c in ALL_CONTEXTS if c != "prolog_slurmd" or statuses == [0, 4]]
    def retry_runs():  # the failed attempt's Epilog (restart 0) may still be the latest for a moment
        runs = hook_runs_done_last(sc, contexts)
        ok = runs and all(one(r, C.K_HOOK_STARTED)[C.R_JOB]["restart_count"] == "1" for r in runs.values())
        return runs if ok else None
    poll(retry_runs, 15, "the retry's hook runs in every context")
    runs = hook_runs_done_last(sc, contexts)
    got = {ctx: (one(recs, C.K_HOOK_STARTED)[C.R_JOB]["job_id"],
                 one(recs, C.K_HOOK_STARTED)[C.R_JOB]["restart_count"]) for ctx, recs in runs.items()}
    assert got == {ctx: (str(job), "1") for ctx in contexts}, \
        f"(job_id, restart_count) per context of the retry: {got}"


def hook_runs_done_last(sc, contexts):
    """context -> the records of its latest finished run, once each has one
    (a finished run whose hook_started is after the job's requeue)."""
    hooks = sc.hooks()
    out = {}
    for ctx in contexts:
        runs = [r for r in hooks.get(ctx, []) if kinds(r, C.K_HOOK_ENDED)]
        if not runs:
            return None
        out[ctx] = max(runs, key=lambda r: r[0][C.R_SEQ])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_slurm_timeout_kills_the_runner(deploy, cluster, request, mode):
    """With no budget of its own, hookscope-hook is what slurmd kills at
    PrologEpilogTimeout (SIGTERM to its process group, SIGKILL 10 ms later).
    Slurm's outcome is unchanged, the hung script does not outlive the hook,
    the journal already names the script that was running, and the real
    pipeline (agent, collector, why) reports the runner as killed in it."""
    tag = "315" if mode == "bare" else "316"
    sc = deploy(mode, {"prolog_slurmd": {"10-hang": f"echo stuck\n/bin/sleep {tag}\n"}}, budget_s=0)
    mark = cluster.log_size("slurmd")
    job = cluster.sbatch(JOB)
    node = cluster.wait_drained(timeout=PROLOG_EPILOG_TIMEOUT + 30)
    info = cluster.wait_job_settled(job)
    assert node["Reason"] == PROLOG_ERROR, node
    assert info["JobState"] == "PENDING" and "held" in info["Reason"], info
    assert "prolog poll timeout" in cluster.log_since("slurmd", mark)
    poll(lambda: not _sleepers(tag), 10, lambda: f"the hung script /bin/sleep {tag} to be gone: {_sleepers(tag)}")
    if mode == "bare":
        return
    hooks = poll(lambda: sc.hooks().get("prolog_slurmd"), 10, "the prolog's journal file")
    assert len(hooks) == 1
    started = one(hooks[0], C.K_SCRIPT_STARTED)
    assert started[C.R_PATH] == str(sc.path("prolog_slurmd", "10-hang"))
    assert one(hooks[0], C.K_HOOK_STARTED)[C.R_JOB]["job_id"] == str(job)
    if not kinds(hooks[0], C.K_HOOK_ENDED):
        # The runner died before its last record: the agent ships such a file
        # as abandoned once it is older than its grace (and the PID is gone).
        from emitter.agent import AgentSettings

        grace = AgentSettings.abandon_grace_s + 0.5
        poll(lambda: all(time.time() - p.stat().st_mtime > grace for p in sc.journal_dir.glob("*" + C.JOURNAL_SUFFIX)),
             grace + 15, f"the abandoned journal file to be older than the agent's grace ({grace} s)")
    why = request.getfixturevalue("pipeline")(sc.journal_dir, cluster.node)
    cause = why["cause"]
    assert cause is not None, (why, [{k: r.get(k) for k in (C.R_KIND, C.R_STATUS, C.R_EXIT, C.R_SIGNAL,
                                                              C.R_TIMED_OUT, C.R_RUNNER_SIGNAL)}
                                     for r in sc.records()])
    assert (cause["context"], cause["script"], str(cause["job_id"])) == \
        ("prolog_slurmd", str(sc.path("prolog_slurmd", "10-hang")), str(job)), cause
    # slurmd sends SIGTERM, then SIGKILL 10 ms later: the runner either got to
    # record the script's end (SIGTERM forwarded: signal 15) or died first
    # (the agent ships the abandoned file: runner_killed, no exit status).
    if cause["runner_killed"]:
        assert cause["exit_code"] is None, cause
    else:
        assert (cause["signal"], cause["exit_code"]) == (15, 128 + 15), cause
    assert not cause["timed_out"], "no runner budget here: Slurm stopped it"


@pytest.mark.parametrize("mode", MODES)
def test_task_prolog_runs_for_every_step(deploy, cluster, mode):
    """TaskProlog runs before the batch step and again before each srun step;
    each gets the export (under hookscope each is its own recorded hook run)."""
    sc = deploy(mode, {"prolog_task": {"50-export": "echo \"export HS_STEP_SEEN=step-$SLURM_STEP_ID\"\n"}})
    job = cluster.sbatch("#!/bin/sh\necho batch:$HS_STEP_SEEN\nsrun -n1 /bin/sh -c 'echo srun:$HS_STEP_SEEN'\n")
    info = cluster.wait_job_settled(job)
    assert info["JobState"] == "COMPLETED", (info, cluster.job_output(job))
    # the batch step's TaskProlog has no SLURM_STEP_ID; srun's first step is 0
    assert cluster.job_output(job) == "batch:step-\nsrun:step-0\n", cluster.job_output(job)
    assert [r for r in sc.ran() if r[0] == "prolog_task"] == [("prolog_task", str(job), "50-export")] * 2
    if mode == "bare":
        return
    runs = poll(lambda: (lambda rs: len(rs) == 2 and all(kinds(r, C.K_HOOK_ENDED) for r in rs) and rs)(
        sc.hooks().get("prolog_task", [])), 15, "two finished TaskProlog runs")
    steps = sorted(one(r, C.K_HOOK_STARTED)[C.R_JOB]["step_id"] or "" for r in runs)
    assert steps == ["", "0"], steps


@pytest.mark.parametrize("mode", MODES)
def test_task_prolog_as_job_user(deploy, cluster, mode):
    """TaskProlog runs as the job's user, not root.  hookscope-hook must then
    be runnable by that user (here through Debian's Python, as a site would
    install it) and must not change what the job sees: same state, same
    output, the export delivered.  (Its records cannot go to the root-only
    journal; see docs/slurm-tier.md.)"""
    hook = None
    if mode == "hookscope":
        problem = launcher_problem("nobody")
        require(problem is None, problem or "")
        hook = system_python_launcher(cluster.root / "hookscope-hook-anyuser")
    sc = deploy(mode, {"prolog_task": {"50-export": "echo 'export HS_TASK_VAR=as-user'\n"}}, hook=hook)
    job = cluster.sbatch(JOB + "id -un\n", user="nobody")
    info = cluster.wait_job_settled(job)
    assert info["JobState"] == "COMPLETED", (info, cluster.job_output(job))
    assert cluster.job_output(job) == "job-ran\nHS_TASK_VAR=as-user\nnobody\n"
    assert [r for r in sc.ran() if r[0] == "prolog_task"] == [("prolog_task", str(job), "50-export")]
    assert cluster.wait_node({"IDLE"})["State"] == "IDLE"
