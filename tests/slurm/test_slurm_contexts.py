"""Every context journaled (issue 12.7), on the real Slurm tier.

A cluster of its own with ``SlurmUser=slurm`` (Debian's slurm package user):
slurmctld, and so PrologSlurmctld/EpilogSlurmctld, run as ``slurm``.  One
batch job of a non-root user (``hsuser``, created here if missing) that runs
one ``srun`` step.  All eight slots of slurm.conf name ``hookscope-hook``
(Debian's Python, as a site installs it for every user).  Then the real
pipeline (``hookscope agent --once``, ``collect --once``, ``audit job``):
the job's trace holds all eight contexts, root's from the journal and the
others from their owners' per-uid spools, each attested by the uid that ran
it: 0 for Prolog/Epilog, slurm's for the slurmctld hooks, hsuser's for the
task and srun hooks.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from emitter import contract as C
from tests.slurm.cluster import HOOK_PARAMS, SlurmCluster
from tests.slurm.scenario import CONFIG_HEADER, launcher_problem, system_python_launcher
from tests.tiers import require, require_slurm

pytestmark = pytest.mark.slurm

JOB_USER = "hsuser"
SLURM_USER = "slurm"
HOOKSCOPE = Path(sys.executable).parent / "hookscope"
#: slurm.conf parameter -> hookscope context, and which uid runs it
PARAM_CONTEXT = {
    "Prolog": "prolog_slurmd", "Epilog": "epilog_slurmd",
    "PrologSlurmctld": "prolog_slurmctld", "EpilogSlurmctld": "epilog_slurmctld",
    "TaskProlog": "prolog_task", "TaskEpilog": "epilog_task",
    "SrunProlog": "prolog_srun", "SrunEpilog": "epilog_srun",
}


@pytest.fixture(scope="module")
def job_user():
    """``hsuser``, created (system user, no home) for this module if missing."""
    made = False
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        p = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            JOB_USER], capture_output=True, text=True, timeout=60)
        require(p.returncode == 0, f"cannot create the job user {JOB_USER}: {p.stderr.strip()}")
        made = True
    yield pwd.getpwnam(JOB_USER)
    if made:
        subprocess.run(["userdel", JOB_USER], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def slurm_user_cluster(etc_config, job_user, artifacts_dir):
    """A cluster of this module's own with SlurmUser=slurm and every slot
    naming hookscope-hook; yields (cluster, base dir, journal dir)."""
    require_slurm()
    try:
        pwd.getpwnam(SLURM_USER)
    except KeyError:
        require(False, f"no user {SLURM_USER!r} (Debian's slurm packages create it)")
    for user in (SLURM_USER, JOB_USER):
        problem = launcher_problem(user)
        require(problem is None, problem or "")
    root = Path(tempfile.mkdtemp(prefix="hookscope-slurm-"))
    os.chmod(root, 0o755)
    base = root / "ctx"
    base.mkdir(mode=0o755)
    journal = base / "journal"
    journal.mkdir(mode=0o700)
    marker = base / "ran.txt"
    marker.touch()
    os.chmod(marker, 0o666)
    lines = [CONFIG_HEADER + "; the original is restored afterwards", "[runner]",
             f"journal_dir = {json.dumps(str(journal))}", "timeout_s = 5", "", "[runner.dirs]"]
    for ctx in PARAM_CONTEXT.values():
        d = base / ctx
        d.mkdir(mode=0o755)
        s = d / "50-mark"
        s.write_text(f"#!/bin/sh\n/bin/echo \"{ctx} $SLURM_JOB_ID $(/usr/bin/id -u)\" >> {marker}\nexit 0\n")
        os.chmod(s, 0o755)
        lines.append(f"{ctx} = {json.dumps(str(d))}")
    etc_config.parent.mkdir(mode=0o755, exist_ok=True)
    tmp = etc_config.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, etc_config)
    hook = system_python_launcher(root / "hookscope-hook-anyuser")
    c = SlurmCluster(root, prolog_epilog_timeout=20)
    c.slurm_user = SLURM_USER
    try:
        c.start(hooks={p: hook for p in HOOK_PARAMS})
        yield c, base, journal
    finally:
        c.stop()
        keep = artifacts_dir / "slurm-contexts"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(c.log_dir, keep / "log", dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _step(*args, timeout=120):
    p = subprocess.run([str(HOOKSCOPE), *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (f"hookscope {' '.join(args)} exited {p.returncode}\n"
                               f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    return p


def _ended_contexts(journal: Path, job: int) -> dict:
    """context -> directory uid, for every finished hook run of ``job``
    in root's journal and the per-uid spools (read as root)."""
    out = {}
    dirs = [journal] + sorted(Path(f"{journal}.users").glob("[0-9]*"))
    for d in dirs:
        for p in sorted(d.glob("*" + C.JOURNAL_SUFFIX)):
            recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            start = next((r for r in recs if r[C.R_KIND] == C.K_HOOK_STARTED), None)
            if start and (start[C.R_JOB] or {}).get("job_id") == str(job) and recs[-1][C.R_KIND] == C.K_HOOK_ENDED:
                out.setdefault(start[C.R_CONTEXT], set()).add(os.stat(d).st_uid)
    return out


def test_all_eight_contexts_of_one_job_in_its_trace(slurm_user_cluster, nats_server, tmp_path):
    cluster, base, journal = slurm_user_cluster
    db = tmp_path / "hookscope.duckdb"
    # The agent at start creates the per-uid spools' parent (root, 1733).
    _step("agent", "--once", "--nats", nats_server.url, "--journal", str(journal))
    pst = os.lstat(f"{journal}.users")
    assert (pst.st_uid, stat.S_IMODE(pst.st_mode)) == (0, C.USER_SPOOLS_MODE)

    job = cluster.sbatch("#!/bin/sh\necho job-ran\n/usr/bin/srun /bin/true\necho step-done\n",
                         name="ctx", user=JOB_USER)
    info = cluster.wait_job_settled(job)
    assert info["JobState"] == "COMPLETED", (info, cluster.job_output(job, name="ctx"))
    assert cluster.job_output(job, name="ctx") == "job-ran\nstep-done\n"  # nothing of ours in it
    slurm_uid, user_uid = pwd.getpwnam(SLURM_USER).pw_uid, pwd.getpwnam(JOB_USER).pw_uid
    want = {"prolog_slurmd": {0}, "epilog_slurmd": {0},
            "prolog_slurmctld": {slurm_uid}, "epilog_slurmctld": {slurm_uid},
            "prolog_task": {user_uid}, "epilog_task": {user_uid},
            "prolog_srun": {user_uid}, "epilog_srun": {user_uid}}
    deadline = time.monotonic() + 60
    while (got := _ended_contexts(journal, job)) != want:
        if time.monotonic() > deadline:
            ran = (base / "ran.txt").read_text()
            pytest.fail(f"journaled contexts of job {job}: {got}, want {want}\nscripts ran:\n{ran}\n"
                        + cluster.logs(10))
        time.sleep(0.2)
    for d in Path(f"{journal}.users").iterdir():  # each spool: its owner's alone
        st = os.lstat(d)
        assert (str(st.st_uid), stat.S_IMODE(st.st_mode)) == (d.name, 0o700)

    _step("agent", "--once", "--nats", nats_server.url, "--journal", str(journal))
    _step("collect", "--once", "--nats", nats_server.url, "--db", str(db))
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT context, trace_id, attested_uid FROM hook_runs WHERE job_id = ?",
                           [str(job)]).fetchall()
    finally:
        con.close()
    assert {ctx for ctx, _, _ in rows} == set(want), rows
    assert len({tid for _, tid, _ in rows}) == 1, f"one trace per job: {rows}"
    assert all(u in want[ctx] for ctx, _, u in rows), rows  # attested by the uid that ran it
    audit = json.loads(_step("audit", "job", str(job), "--json", "--db", str(db)).stdout)
    shown = {(r["context"], r["attested"]) for r in audit}
    assert shown == {(ctx, "root" if uids == {0} else f"uid {min(uids)}") for ctx, uids in want.items()}, shown
