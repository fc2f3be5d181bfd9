"""The queries tests' scenario: every failure pattern the RCA must tell apart."""

from datetime import timedelta

from tests.queries.builder import T0, StoreBuilder, script

P = "/etc/slurm/prolog.d/"
E = "/etc/slurm/epilog.d/"
MOUNTS = P + "10-mounts.sh"
GPU = P + "20-gpu.sh"
SCRATCH = P + "30-scratch.sh"
HANG = P + "40-hang.sh"
HEALTH = P + "50-health.sh"
UNSAFE = P + "60-unsafe.sh"
NOEXEC = P + "70-noexec.sh"
CLEANUP = E + "90-cleanup.sh"
CTL = "/etc/slurm/epilogslurmctld.d/10-accounting.sh"

BASE_NODES = [f"n{i:03d}" for i in range(10)]
SYSTEMIC_NODES = [f"s{i:03d}" for i in range(300)]


def ok_prolog(extra=()):
    return [script(MOUNTS), script(GPU), *extra]


def build_scenario() -> StoreBuilder:
    """Every failure pattern the RCA must tell apart (times relative to T0)."""
    b = StoreBuilder(cluster="c1")
    h = timedelta(hours=1)
    m = timedelta(minutes=1)
    job = 1000
    # Routine jobs on the base nodes (prolog, epilog, controller epilog).
    for k in range(3):
        for i, node in enumerate(BASE_NODES):
            job += 1
            at = T0 + k * h + i * m
            b.hook(node, at, "prolog_slurmd", job, "alice", ok_prolog([script(SCRATCH)]))
            b.hook(node, at + 10 * m, "epilog_slurmd", job, "alice", [script(CLEANUP)])
            b.hook("ctl", at + 11 * m, "epilog_slurmctld", job, "alice", [script(CTL)])
    # Drift: in hour 3, half the base nodes run a different 20-gpu.sh.
    for i, node in enumerate(BASE_NODES):
        job += 1
        ver = "v1" if i < 5 else "v1-hotfix"
        b.hook(node, T0 + 3 * h + i * m, "prolog_slurmd", job, "dave",
               [script(MOUNTS), script(GPU, ver, duration_ms=30.0 + i)])
    # Script failure on one node only (others ran 30-scratch.sh fine): node fault.
    b.hook("fail01", T0 + 2 * h, "prolog_slurmd", 2001, "alice", ok_prolog([script(SCRATCH)]))
    b.hook("fail01", T0 + 5 * h, "prolog_slurmd", 2002, "carol",
           ok_prolog([script(SCRATCH, exit_code=3, output="mount: /scratch: permission denied\n")]))
    b.node_event("fail01", T0 + 5 * h + m, "DRAIN", "Prolog error", "slurmctld_epilog")
    # A script that hangs past the budget.
    b.hook("hang01", T0 + 5 * h, "prolog_slurmd", 2003, "erin",
           ok_prolog([script(HANG, exit_code=137, signal=9, timed_out=True, duration_ms=300000.0,
                             output="waiting for /dev/nvidia0...\n")]))
    # An epilog failure.
    b.hook("ep01", T0 + 5 * h, "prolog_slurmd", 2004, "frank", ok_prolog())
    b.hook("ep01", T0 + 6 * h, "epilog_slurmd", 2004, "frank",
           [script(CLEANUP, exit_code=1, output="rm: cannot remove '/tmp/job2004': Device or resource busy\n")])
    # Refused scripts: unsafe permissions, and not executable.
    b.hook("perm01", T0 + 5 * h, "prolog_slurmd", 2005, "gina",
           [script(MOUNTS), script(UNSAFE, exit_code=1, refused="unsafe permissions: world-writable (0777)")])
    b.hook("noexec01", T0 + 5 * h, "prolog_slurmd", 2006, "gina",
           [script(MOUNTS), script(NOEXEC, exit_code=127, refused="not executable")])
    # GPU XID right before a GPU-check failure.
    b.hook("gpu01", T0 + 4 * h, "prolog_slurmd", 2007, "hank", ok_prolog())
    for k in range(6):
        at = T0 + 5 * h - 20 * m + k * 5 * m
        b.gpu("gpu01", at, 0, xid=79 if k >= 3 else 0, ecc_dbe=2 if k >= 4 else 0, temperature_c=70 + k * 4)
        b.gpu("gpu01", at, 1, temperature_c=60)
    b.hook("gpu01", T0 + 5 * h, "prolog_slurmd", 2008, "hank",
           [script(MOUNTS), script(GPU, exit_code=2, output="GPU 0 has fallen off the bus\n")])
    # Systemic regression: 50-health.sh v1 fine on 300 nodes, then v2 fails on all.
    for i, node in enumerate(SYSTEMIC_NODES):
        b.hook(node, T0 + 24 * h + i * timedelta(seconds=2), "prolog_slurmd", 3000 + i, "ivan",
               [script(MOUNTS), script(HEALTH, "v1")])
    for i, node in enumerate(SYSTEMIC_NODES):
        b.hook(node, T0 + 27 * h + i * timedelta(seconds=2), "prolog_slurmd", 4000 + i, "ivan",
               [script(MOUNTS), script(HEALTH, "v2", exit_code=1, output="health: unknown option --fast\n")])
    # Drains with no hook failure.
    b.hook("kt01", T0 + 5 * h, "prolog_slurmd", 2009, "judy", ok_prolog())
    b.hook("kt01", T0 + 6 * h, "epilog_slurmd", 2009, "judy", [script(CLEANUP)])
    b.node_event("kt01", T0 + 6 * h + 5 * m, "DRAIN", "Kill task failed", "slurmctld_epilog")
    b.node_event("nr01", T0 + 6 * h, "DOWN", "Not responding", "agent")
    # Slurm says "Prolog error" but the failed hook never reached the store.
    b.hook("lost01", T0 + 5 * h, "prolog_slurmd", 2014, "max", ok_prolog())
    b.node_event("lost01", T0 + 6 * h, "DRAIN", "Prolog error", "slurmctld_epilog")
    # A node that failed, then recovered.
    b.hook("rec01", T0 + 5 * h, "prolog_slurmd", 2010, "kim", ok_prolog([script(SCRATCH, exit_code=1, output="x")]))
    b.hook("rec01", T0 + 6 * h, "prolog_slurmd", 2011, "kim", ok_prolog([script(SCRATCH)]))
    # The runner killed mid-script (slurmd SIGKILL at its prolog timeout).
    b.hook("kill01", T0 + 5 * h, "prolog_slurmd", 2012, "lee", [script(MOUNTS), script(GPU)], runner_killed=True)
    # A spool eviction (explained gap) on n000.
    b.evict("n000", 4, T0 + 7 * h)
    b.hook("n000", T0 + 7 * h, "prolog_slurmd", 2013, "alice", ok_prolog())
    add_outcomes(b)
    return b


# ---------------------------------------------------------------- job outcomes (issue 16)
IB = P + "80-ib.sh"
NCCL = P + "85-nccl.sh"
GDR = P + "81-gdr.sh"
QUOTA = "/etc/slurm/prolog_slurmctld.d/10-quota.sh"
ACCT = "/etc/slurm/epilog_slurmctld.d/20-acct.sh"
SRUNP = "/etc/slurm/srun_prolog.d/10-env.sh"
TASKP = "/etc/slurm/task_prolog.d/10-limits.sh"
SLOW = P + "05-slow.sh"
OFED = "/etc/slinky/init.d/10-ofed.sh"
T1 = T0 + timedelta(hours=40)


def _job(b, at, job, nodes, user="olga", restart=None, fail=None, ctl_ok=True):
    """A whole job: PrologSlurmctld, Prolog on each node, Epilog, EpilogSlurmctld.
    ``fail``: {(context, node): script} replacing that hook's scripts."""
    fail = fail or {}
    s = timedelta(seconds=1)
    b.hook("ctl", at, "prolog_slurmctld", job, user,
           fail.get(("prolog_slurmctld", "ctl"), [script(QUOTA)]), restart_count=restart)
    if ("prolog_slurmctld", "ctl") in fail:
        b.hook("ctl", at + 2 * s, "epilog_slurmctld", job, user, [script(ACCT)], restart_count=restart)
        return
    for n in nodes:
        b.hook(n, at + s, "prolog_slurmd", job, user, fail.get(("prolog_slurmd", n), [script(IB)]),
               restart_count=restart)
    # slurmctld counts a requeue before the failed run's epilogs: they carry the next count.
    if restart is not None and any(k[0] == "prolog_slurmd" for k in fail):
        restart += 1
    for n in nodes:
        b.hook(n, at + 60 * s, "epilog_slurmd", job, user, [script(CLEANUP)], restart_count=restart)
    b.hook("ctl", at + 61 * s, "epilog_slurmctld", job, user,
           fail.get(("epilog_slurmctld", "ctl"), [script(ACCT)]), restart_count=restart)


def add_outcomes(b):
    m = timedelta(minutes=1)
    h = timedelta(hours=1)
    # Boot-time init runs: pj02, st0x, pt01 fine; pj01's OFED install failed; noinit01 has none.
    for n in ("pj02", "st01", "st02", "st03", "st04", "pt01"):
        b.hook(n, T1 - 2 * h, "init_worker", None, None, [script(OFED)])
    b.hook("pj01", T1 - 2 * h, "init_worker", None, None,
           [script(OFED, exit_code=1, output="mlnx_ofed: install failed: no space left on device\n")])
    # 5001: Prolog fails on pj01 -> requeued held; released, the retry on pj02 succeeds.
    _job(b, T1, 5001, ["pj01"], restart=0,
         fail={("prolog_slurmd", "pj01"): [script(IB, exit_code=4, output="ib0: link down\n")]})
    _job(b, T1 + 10 * m, 5001, ["pj02"], restart=1)
    # 5002: PrologSlurmctld fails, no retry follows: cancelled (interactive, inferred).
    _job(b, T1 + 20 * m, 5002, ["pj02"], fail={("prolog_slurmctld", "ctl"): [
        script(QUOTA, exit_code=1, output="quota: account olga over its GPU-hours\n")]})
    # 5003: PrologSlurmctld fails on the first run; the requeued run succeeds (batch).
    _job(b, T1 + 30 * m, 5003, ["pj02"], restart=0, fail={("prolog_slurmctld", "ctl"): [
        script(QUOTA, exit_code=1, output="quota: account olga over its GPU-hours\n")]})
    _job(b, T1 + 31 * m, 5003, ["pj02"], restart=1)
    # 5004: the SrunProlog fails on the login node: the step is cancelled.
    _job(b, T1 + 40 * m, 5004, ["pj02"])
    b.hook("login01", T1 + 40 * m + 5 * timedelta(seconds=1), "prolog_srun", 5004, "olga",
           [script(SRUNP, exit_code=2, output="module: command not found\n")])
    # 5005: the TaskProlog fails on pj02: the task is cancelled.
    _job(b, T1 + 50 * m, 5005, ["pj02"])
    b.hook("pj02", T1 + 50 * m + 3 * timedelta(seconds=1), "prolog_task", 5005, "olga",
           [script(TASKP, exit_code=1, output="ulimit: invalid argument\n")])
    # 5006: only the EpilogSlurmctld fails: logged.
    _job(b, T1 + 60 * m, 5006, ["pj02"], fail={("epilog_slurmctld", "ctl"): [
        script(ACCT, exit_code=3, output="sacctmgr: connection refused\n")]})
    # Stale: 85-nccl.sh v2 reaches st01-st03 at T1+2h; st04 keeps v1 and fails job 5007 at T1+4h.
    for k, n in enumerate(("st01", "st02", "st03", "st04")):
        b.hook(n, T1 + h + k * m, "prolog_slurmd", 5100 + k, "pia", [script(NCCL, "v1")])
    for k, n in enumerate(("st01", "st02", "st03")):
        b.hook(n, T1 + 2 * h + k * m, "prolog_slurmd", 5110 + k, "pia", [script(NCCL, "v2")])
    b.hook("st04", T1 + 4 * h, "prolog_slurmd", 5007, "pia",
           [script(NCCL, "v1", exit_code=1, output="nccl: /opt/nccl-2.18 not found\n")])
    # 5008: no PrologFlags=Alloc: the Prolog runs 10 min after allocation, at the
    # first step, and holds it back 5 s.  5009: the Prolog runs at allocation.
    b.hook("ctl", T1 + 5 * h, "prolog_slurmctld", 5008, "quinn", [script(QUOTA)])
    b.hook("pt01", T1 + 5 * h + 10 * m, "prolog_slurmd", 5008, "quinn", [script(SLOW, duration_ms=5000.0)])
    b.hook("pt01", T1 + 5 * h + 10 * m + 6 * timedelta(seconds=1), "prolog_task", 5008, "quinn", [script(TASKP)])
    b.hook("ctl", T1 + 6 * h, "prolog_slurmctld", 5009, "quinn", [script(QUOTA)])
    b.hook("pt01", T1 + 6 * h + timedelta(seconds=1), "prolog_slurmd", 5009, "quinn", [script(SLOW, duration_ms=5000.0)])
    # 5011: an interactive job (srun) whose Prolog fails on pj01: Slurm cancels
    # it; its epilogs carry no raised restart count (no requeue).
    _job(b, T1 + 8 * h, 5011, ["pj01"],
         fail={("prolog_slurmd", "pj01"): [script(IB, exit_code=4, output="ib0: link down\n")]})
    # 5010: a Prolog failure on a node that never ran its init script.
    b.hook("noinit01", T1 + 7 * h, "prolog_slurmd", 5010, "rita",
           [script(GDR, exit_code=4, output="nvidia_peermem: module not loaded\n")])
