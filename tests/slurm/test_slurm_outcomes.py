"""Issue 16, real-Slurm tier: one failing hook in each context, Slurm's own
verdict (``scontrol show job``/``node``, srun's exit and output) side by side
with hookscope's (``hookscope why job J --json`` over the real pipeline).

Every slot of slurm.conf names ``hookscope-hook``; each test puts one failing
script in one context (every other context runs one harmless script), runs a
batch job (sbatch) or an interactive one (srun), waits for Slurm to settle,
then ships the journal (``hookscope agent --once``), loads it
(``hookscope collect --once``) and asks ``hookscope why job J --json``.  What
hookscope says Slurm did (job and node) must be what Slurm shows.

The boot-time init context is exercised on the same node: ``hookscope run
--context init_worker --dir D`` as a node-start entrypoint would, failing,
before the Prolog failure that ``why`` then ties to it.

Not exercised here: "the same script failed elsewhere" (the cluster has one
node; the queries tests cover it on both sources).
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emitter import contract as C
from tests.slurm.cluster import parse_kv
from tests.slurm.scenario import hook_binary, hook_missing_reason
from tests.tiers import require

pytestmark = pytest.mark.slurm

HOOKSCOPE = Path(sys.executable).parent / "hookscope"
PARAM = {ctx: C.CONSEQUENCE[ctx]["hook"] for ctx in C.CONTEXTS if ctx not in C.INIT_CONTEXTS}
BATCH = "#!/bin/sh\necho job-ran\n"
LAUNCH_HELD = "launch failed requeued held"


class Deployment:
    """Hook directories for the eight Slurm contexts and init_worker, the
    production config pointing at them, slurm.conf naming hookscope-hook."""

    def __init__(self, base: Path, fail_ctx: str, body: str):
        self.base = base
        self.journal = base / "journal"
        self.dirs = {}
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        for ctx in list(PARAM) + ["init_worker"]:
            d = base / ctx
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)
            self.dirs[ctx] = d
            name, text = ("20-fail", body) if ctx == fail_ctx else ("50-ok", "exit 0\n")
            p = d / name
            p.write_text("#!/bin/sh\n" + text)
            os.chmod(p, 0o755)
        self.script = str(self.dirs[fail_ctx] / "20-fail") if fail_ctx else None

    def config(self) -> str:
        lines = ["# written by tests/slurm (the real-Slurm tier); the original is restored afterwards",
                 "[runner]", f"journal_dir = {json.dumps(str(self.journal))}", "timeout_s = 5",
                 "kill_grace_s = 0.5", "", "[runner.dirs]"]
        lines += [f"{ctx} = {json.dumps(str(d))}" for ctx, d in self.dirs.items()]
        return "\n".join(lines) + "\n"

    def hook_runs(self) -> list[dict]:
        """(context, job, ended) per hook run in the journal so far."""
        runs = {}
        for p in sorted(self.journal.glob("*" + C.JOURNAL_SUFFIX)) if self.journal.is_dir() else []:
            for line in p.read_text().splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                h = runs.setdefault(r[C.R_HOOK_ID], {"ended": False})
                if r[C.R_KIND] == C.K_HOOK_STARTED:
                    h.update(context=r[C.R_CONTEXT], job=(r.get(C.R_JOB) or {}).get("job_id"))
                elif r[C.R_KIND] == C.K_HOOK_ENDED:
                    h["ended"] = True
        return list(runs.values())


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@pytest.fixture
def outcomes(cluster, etc_config, nats_server, tmp_path, request):
    """deploy(fail_ctx, body) -> Deployment; .why_job(job) / .why_node() run the pipeline."""
    r = hook_missing_reason()
    require(r is None, r or "")
    require(HOOKSCOPE.exists(), f"{HOOKSCOPE} is not installed (pip install -e . in the venv)")
    db = tmp_path / "store" / "hookscope.duckdb"
    db.parent.mkdir()
    state = {}

    def step(*args, timeout=120):
        p = subprocess.run([str(HOOKSCOPE), *args], capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, (f"hookscope {' '.join(args)} exited {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        return p.stdout

    def deploy(fail_ctx, body, mode="hookscope"):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        dep = Deployment(cluster.root / "outcomes" / name, fail_ctx, body)
        if mode == "bare":
            # slurm.conf names the scripts themselves (one per context), as without hookscope
            cluster.set_hooks(**{param: str(next(dep.dirs[ctx].iterdir())) for ctx, param in PARAM.items()})
            return dep
        etc_config.parent.mkdir(mode=0o755, exist_ok=True)
        tmp = etc_config.with_suffix(".tmp")
        tmp.write_text(dep.config())
        os.chmod(tmp, 0o644)
        os.replace(tmp, etc_config)
        cluster.set_hooks(**{param: str(hook_binary()) for param in PARAM.values()})
        state["dep"] = dep
        return dep

    def settle(job, contexts):
        """Wait until every started hook ended and ``contexts`` ran for ``job``."""
        dep = state["dep"]

        def done():
            runs = dep.hook_runs()
            have = {r.get("context") for r in runs if r.get("job") == str(job) and r["ended"]}
            return runs and all(r["ended"] for r in runs) and set(contexts) <= have
        _wait(done, 60, f"hook runs {sorted(contexts)} of job {job} to end in {dep.journal}")

    def ship():
        step("agent", "--once", "--nats", nats_server.url, "--journal", str(state["dep"].journal))
        step("collect", "--once", "--nats", nats_server.url, "--db", str(db))

    def why_job(job, *extra):
        ship()
        return json.loads(step("why", "job", str(job), "--json", "--db", str(db), *extra))

    def why_node():
        ship()
        return json.loads(step("why", cluster.node, "--json", "--db", str(db)))

    deploy.settle, deploy.why_job, deploy.why_node = settle, why_job, why_node
    return deploy


def _job_by_name(cluster, name):
    out = cluster.scontrol("show", "job", "-o", check=False).stdout
    jobs = [parse_kv(line) for line in out.splitlines() if line.strip()]
    found = [j for j in jobs if j.get("JobName") == name]
    assert found, f"no job named {name} in: {out[-2000:]}"
    return found[-1]


def _srun(cluster, name, timeout=60):
    return cluster.run("srun", "-N1", "-n1", f"--job-name={name}", "/bin/echo", "step-ran",
                       check=False, timeout=timeout)


def _reason(job):
    """scontrol prints a multi-word Reason with underscores."""
    return job.get("Reason", "").replace("_", " ")


def _node_reason(cluster):
    info = cluster.node_info()
    return info["Reason"] if "DRAIN" in info.get("State", "") else None


def _same_node_verdict(cluster, outcome):
    """hookscope's node consequence is what scontrol show node says."""
    assert outcome["drain_reason"] == _node_reason(cluster), (outcome, cluster.node_info())
    assert (outcome["node"] == "DRAIN") == ("DRAIN" in cluster.node_info().get("State", ""))


# ------------------------------------------------------------ Prolog (+ init_worker)
def test_prolog_fails_requeued_held_after_failed_init(outcomes, cluster):
    dep = outcomes("prolog_slurmd", "echo 'ib0: link down' >&2\nexit 4\n")
    # The node-start entrypoint's init, through hookscope, failing.
    ofed = dep.dirs["init_worker"] / "10-ofed"
    ofed.write_text("#!/bin/sh\necho 'mlnx_ofed: install failed' >&2\nexit 3\n")
    os.chmod(ofed, 0o755)
    (dep.dirs["init_worker"] / "50-ok").unlink()
    p = subprocess.run([str(HOOKSCOPE), "run", "--context", "init_worker", "--dir", str(dep.dirs["init_worker"])],
                       capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                                      if not k.startswith("SLURM_")})
    assert p.returncode == 3 and "install failed" in p.stdout + p.stderr, p
    job = cluster.sbatch(BATCH)
    cluster.wait_drained()
    sj = cluster.wait_job_settled(job)
    outcomes.settle(job, ["prolog_slurmd"])
    d = outcomes.why_job(job)
    o = d["outcome"]
    # Slurm's verdict and ours
    assert sj["JobState"] == "PENDING" and _reason(sj) == LAUNCH_HELD == o["reason"], (sj, o)
    assert o["job"] == "requeued held"
    _same_node_verdict(cluster, o)
    assert d["decided_by"]["script"] == dep.script and d["decided_by"]["exit_code"] == 4
    assert "ib0: link down" in d["decided_by"]["output"] and d["decided_by"]["sha256"]
    assert d["decided_by"]["node"] == cluster.node and "job-ran" not in cluster.job_output(job)
    assert d["init"]["failed"] and d["init"]["script"] == str(ofed) and d["init"]["exit_code"] == 3
    assert f"scontrol release {job}" in d["verdict"] and "10-ofed exited 3" in d["verdict"]
    n = outcomes.why_node()
    assert n["init"]["failed"] and "10-ofed exited 3" in n["verdict"]


def test_prolog_fails_interactive_srun(outcomes, cluster):
    outcomes("prolog_slurmd", "echo 'ib0: link down' >&2\nexit 4\n")
    p = _srun(cluster, "oprolog-srun")
    cluster.wait_drained()
    sj = _job_by_name(cluster, "oprolog-srun")
    sj = cluster.wait_job_settled(sj["JobId"])
    # the epilogs (no raised restart count: no requeue) tell hookscope it was not requeued
    outcomes.settle(sj["JobId"], ["prolog_slurmd", "epilog_slurmctld"])
    d = outcomes.why_job(sj["JobId"])
    o = d["outcome"]
    print(f"interactive Prolog failure: srun exit {p.returncode}, JobState {sj['JobState']} "
          f"Reason {sj.get('Reason')!r}, stderr {p.stderr.strip()[-300:]!r}; hookscope: {o['text']!r} {o['inferred']}")
    assert p.returncode != 0 and "step-ran" not in p.stdout
    words = {"CANCELLED": "cancelled", "PENDING": "requeued held" if "held" in _reason(sj) else "requeued"}
    assert o["job"] == words.get(sj["JobState"], sj["JobState"]), (sj, o)
    _same_node_verdict(cluster, o)


def test_epilog_fails_node_drains_job_completes(outcomes, cluster):
    dep = outcomes("epilog_slurmd", "echo 'umount /scratch: busy' >&2\nexit 5\n")
    job = cluster.sbatch(BATCH)
    cluster.wait_drained()
    sj = cluster.wait_job(job, {"COMPLETED"})
    outcomes.settle(job, ["epilog_slurmd", "epilog_slurmctld"])
    d = outcomes.why_job(job)
    assert sj["JobState"] == "COMPLETED" and "job-ran" in cluster.job_output(job)
    assert d["outcome"]["scope"] == "logged" and d["outcome"]["job"] is None
    _same_node_verdict(cluster, d["outcome"])
    assert d["decided_by"]["script"] == dep.script and "'Epilog error'" in d["verdict"]


# ------------------------------------------------------------ PrologSlurmctld
def test_prolog_slurmctld_batch_requeued_then_runs(outcomes, cluster):
    flag = cluster.root / "outcomes" / "quota-once"
    flag.unlink(missing_ok=True)
    dep = outcomes("prolog_slurmctld", f"if [ ! -e {flag} ]; then /bin/touch {flag}; "
                                       "echo 'quota: over GPU-hours' >&2; exit 1; fi\nexit 0\n")
    job = cluster.sbatch(BATCH)
    # Slurm requeues the batch job: PENDING, Restarts=1, eligible again later (BeginTime)
    sj = cluster._until(lambda: cluster.job(job), lambda j: j.get("JobState") == "PENDING"
                        and int(j.get("Restarts") or 0) >= 1, 60, f"job {job} to be requeued")
    # slurmctld counts the requeue before the failed run's EpilogSlurmctld:
    # its restart count (1) is what tells hookscope the job was requeued.
    outcomes.settle(job, ["prolog_slurmctld", "epilog_slurmctld"])
    d = outcomes.why_job(job)
    assert d["outcome"]["job"] == "requeued" and "held" not in sj["Reason"].lower(), (sj, d["outcome"])
    assert d["outcome"]["kind"]["value"] == "batch" and d["retry"] == {"attempt": None, "ran": False}
    assert d["decided_by"]["script"] == dep.script and d["decided_by"]["node"] == cluster.node
    assert "quota: over GPU-hours" in d["decided_by"]["output"]
    _same_node_verdict(cluster, d["outcome"])
    # An admin lets it start now instead of at its BeginTime: the retry runs and succeeds.
    cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    sj = cluster.wait_job(job, {"COMPLETED"}, timeout=120)
    outcomes.settle(job, ["epilog_slurmctld", "prolog_slurmd"])
    d = outcomes.why_job(job)
    assert int(sj["Restarts"]) == 1 and "job-ran" in cluster.job_output(job), sj
    assert d["outcome"]["job"] == "requeued" and d["outcome"]["kind"]["value"] == "batch"
    assert d["retry"]["ran"] and d["retry"]["failed_hooks"] == 0, d["retry"]
    assert "its hooks all succeeded" in d["verdict"]


def test_prolog_slurmctld_interactive_srun_cancelled(outcomes, cluster):
    outcomes("prolog_slurmctld", "echo 'quota: over GPU-hours' >&2\nexit 1\n")
    p = _srun(cluster, "octl-srun")
    sj = _job_by_name(cluster, "octl-srun")
    job = sj["JobId"]
    sj = cluster.wait_job(job, {"CANCELLED", "FAILED", "COMPLETED"})
    outcomes.settle(job, ["prolog_slurmctld"])
    d = outcomes.why_job(job)
    assert p.returncode != 0 and "step-ran" not in p.stdout, (p.returncode, p.stdout, p.stderr)
    assert sj["JobState"] == "CANCELLED" and d["outcome"]["job"] == "cancelled", (sj, d["outcome"])
    assert "PrologSlurmctld failed, job killed" in p.stderr + d["verdict"]
    _same_node_verdict(cluster, d["outcome"])


def test_epilog_slurmctld_logged_only(outcomes, cluster):
    outcomes("epilog_slurmctld", "echo 'sacctmgr: refused' >&2\nexit 3\n")
    job = cluster.sbatch(BATCH)
    sj = cluster.wait_job(job, {"COMPLETED"})
    outcomes.settle(job, ["epilog_slurmctld"])
    d = outcomes.why_job(job)
    assert sj["JobState"] == "COMPLETED" and d["outcome"]["scope"] == "logged" and d["outcome"]["job"] is None
    assert "Slurm only logs it" in d["verdict"]
    _same_node_verdict(cluster, d["outcome"])


# ------------------------------------------------------------ task and srun hooks
def test_task_prolog_fails_task_cancelled(outcomes, cluster):
    outcomes("prolog_task", "echo 'ulimit: invalid' >&2\nexit 1\n")
    job = cluster.sbatch(BATCH)
    sj = cluster.wait_job_settled(job)
    outcomes.settle(job, ["prolog_task", "epilog_slurmctld"])
    d = outcomes.why_job(job)
    ran = "job-ran" in cluster.job_output(job)
    assert d["outcome"]["job"] == ("task cancelled" if not ran else None), (sj, ran, d["outcome"])
    assert not ran and sj["JobState"] != "COMPLETED", sj
    _same_node_verdict(cluster, d["outcome"])


def test_task_epilog_logged_only(outcomes, cluster):
    outcomes("epilog_task", "exit 2\n")
    job = cluster.sbatch(BATCH)
    sj = cluster.wait_job(job, {"COMPLETED"})
    outcomes.settle(job, ["epilog_task", "epilog_slurmctld"])
    d = outcomes.why_job(job)
    assert "job-ran" in cluster.job_output(job) and d["outcome"]["scope"] == "logged", sj
    _same_node_verdict(cluster, d["outcome"])


def test_srun_prolog_bare_cancels_the_step_too(outcomes, cluster):
    """The same failing SrunProlog without hookscope: srun aborts the step
    just the same (so hookscope's 'step cancelled' is Slurm's, not ours)."""
    outcomes("prolog_srun", "echo 'module: command not found' >&2\nexit 2\n", mode="bare")
    p = _srun(cluster, "o-bare-srun")
    sj = cluster.wait_job(_job_by_name(cluster, "o-bare-srun")["JobId"], {"COMPLETED", "CANCELLED", "FAILED"})
    print(f"bare prolog_srun: srun exit {p.returncode}, step ran: {'step-ran' in p.stdout}, "
          f"JobState {sj['JobState']}, stderr {p.stderr.strip()[-600:]!r}")
    # srun 22.05: "srun prolog failed rc = 2. Aborting step." and slurmstepd
    # "*** STEP N.0 ON node CANCELLED ***"; a task quick enough may still have
    # printed before the abort reached it (a race inside Slurm).
    assert "Aborting step" in p.stderr and "CANCELLED" in p.stderr, (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("ctx", ("prolog_srun", "epilog_srun"))
def test_srun_hooks(outcomes, cluster, ctx):
    outcomes(ctx, "echo 'module: command not found' >&2\nexit 2\n")
    name = f"o-{ctx}"
    p = _srun(cluster, name)
    sj = cluster.wait_job(_job_by_name(cluster, name)["JobId"], {"COMPLETED", "CANCELLED", "FAILED"})
    outcomes.settle(sj["JobId"], [ctx, "epilog_slurmctld"])
    d = outcomes.why_job(sj["JobId"])
    step_ran = "step-ran" in p.stdout
    # Slurm's own words for the step: srun aborts it ("Aborting step") and
    # slurmstepd reports it CANCELLED; whether a fast task printed first is a race.
    cancelled = "Aborting step" in p.stderr and "CANCELLED" in p.stderr
    print(f"{ctx}: srun exit {p.returncode}, step ran: {step_ran}, JobState {sj['JobState']}, "
          f"stderr {p.stderr.strip()[-600:]!r}; hookscope: {d['outcome']['text']!r}")
    assert d["decided_by"]["context"] == ctx and d["decided_by"]["exit_code"] == 2
    # Slurm's verdict on the step is hookscope's
    assert (d["outcome"]["job"] == "step cancelled") == cancelled, (p.returncode, p.stdout, p.stderr,
                                                                     sj, d["outcome"])
    assert cancelled or step_ran
    _same_node_verdict(cluster, d["outcome"])


# ------------------------------------------------------------ Prolog timing (no PrologFlags=Alloc)
def test_prolog_at_first_step_without_alloc(outcomes, cluster):
    """Without PrologFlags=Alloc slurmd runs the Prolog when the job's first
    step reaches the node: an salloc whose first srun comes 32 s after the
    allocation waits for the Prolog then.  hookscope says so from the
    records' own times (PrologSlurmctld start vs Prolog start)."""
    from tests.slurm.cluster import parse_config

    outcomes("prolog_slurmd", "/bin/sleep 2\nexit 0\n")  # a slow Prolog that succeeds
    cluster.prolog_flags = None
    try:
        cluster.restart_slurmd()
        cluster.reconfigure()
        flags = parse_config(cluster.scontrol("show", "config").stdout).get("PrologFlags")
        p = cluster.run("salloc", "-N1", "--job-name=o-noalloc", "/bin/sh", "-c",
                        "/bin/sleep 32; srun /bin/echo step-ran", check=False, timeout=150)
        job = _job_by_name(cluster, "o-noalloc")["JobId"]
        outcomes.settle(job, ["prolog_slurmd", "epilog_slurmctld"])
        d = outcomes.why_job(job)
    finally:
        cluster.prolog_flags = "Alloc"
        cluster.restart_slurmd()
        cluster.reconfigure()
    print(f"no Alloc: PrologFlags={flags!r}, salloc exit {p.returncode}; hookscope: {d['prolog_timing']}")
    assert "alloc" not in str(flags).lower() and "step-ran" in p.stdout, (flags, p.stdout, p.stderr)
    (t,) = d["prolog_timing"]
    assert t["at"] == "first_step" and t["how"] == "inferred" and t["delays_step"], t
    assert t["after_allocation_s"] >= 30 and t["prolog_ms"] >= 2000, t
    assert d["decided_by"] is None and "first step" in d["verdict"] and "PrologFlags=Alloc" in d["verdict"]
