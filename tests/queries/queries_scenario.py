"""The queries tests' scenario: every failure pattern the RCA must tell apart.

``builder`` is loaded under the name ``qbuilder`` so that it cannot collide
with other test directories' helper modules named ``builder``.
"""

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path

if "qbuilder" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("qbuilder", Path(__file__).with_name("builder.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["qbuilder"] = _mod
    _spec.loader.exec_module(_mod)

from qbuilder import T0, StoreBuilder, script  # noqa: E402

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
    return b
