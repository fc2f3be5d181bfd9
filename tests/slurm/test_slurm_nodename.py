"""Issue 11 (node identity), on the real daemons: a node whose Slurm NodeName
differs from the host name (``NodeHostname=``, ``slurmd -N``, pods).

A second single-node cluster runs beside the session one, with
``NodeName=hs-renamed-node NodeHostname=<this host>`` and ``slurmd -N
hs-renamed-node``.  A prolog fails under hookscope-hook; the records must
carry the Slurm name (slurmd gives it as ``SLURMD_NODENAME``), and ``hookscope
why hs-renamed-node`` (agent, collector, why, as a site runs them) must find
the drain's cause.  Before the fix the records took the host name, and
``why <NodeName>`` found nothing after a real drain.
"""

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from emitter import contract as C

from tests.slurm.cluster import SlurmCluster
from tests.slurm.scenario import PROLOG_EPILOG_TIMEOUT, Scenario, hook_missing_reason, kinds
from tests.tiers import require, require_slurm

pytestmark = pytest.mark.slurm

NODE = "hs-renamed-node"
JOB = "#!/bin/sh\necho job-ran\n"


@pytest.fixture(scope="module")
def renamed_cluster(artifacts_dir):
    require_slurm()
    root = Path(tempfile.mkdtemp(prefix="hookscope-slurm-"))
    c = SlurmCluster(root, node=NODE, hostname=socket.gethostname().split(".")[0],
                     prolog_epilog_timeout=PROLOG_EPILOG_TIMEOUT, cluster_name="hookscope-renamed")
    try:
        c.start()
        yield c
    finally:
        c.stop()
        keep = artifacts_dir / "slurm-renamed-node"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(c.log_dir, keep / "log", dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def test_records_and_why_use_the_slurm_node_name(renamed_cluster, etc_config, pipeline):
    c = renamed_cluster
    problem = hook_missing_reason()
    require(problem is None, problem or "")
    assert c.node != c.hostname
    sc = Scenario(c.root / "scenarios" / "nodename",
                  {"prolog_slurmd": {"20-check": "echo 'gpu0: XID 79, fallen off the bus' >&2\nexit 3\n"}})
    etc_config.parent.mkdir(mode=0o755, exist_ok=True)
    tmp = etc_config.with_suffix(".tmp")
    tmp.write_text(sc.runner_config())
    os.chmod(tmp, 0o644)
    os.replace(tmp, etc_config)
    c.set_hooks(**sc.slurm_hooks("hookscope"))
    job = c.sbatch(JOB)
    node = c.wait_drained(timeout=PROLOG_EPILOG_TIMEOUT + 30)
    assert node["Reason"] == C.DRAIN_REASON["prolog_slurmd"], node
    deadline = time.monotonic() + 20
    while True:
        runs = [r for r in sc.hooks().get("prolog_slurmd", []) if kinds(r, C.K_HOOK_ENDED)]
        if runs or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert runs, f"no finished prolog run in {sc.journal_dir}"
    started = kinds(runs[0], C.K_HOOK_STARTED)[0]
    assert started[C.R_JOB]["job_id"] == str(job)
    assert started[C.R_NODE] == NODE, \
        f"records name the node {started[C.R_NODE]!r}; Slurm calls it {NODE!r} (SLURMD_NODENAME)"
    why = pipeline(sc.journal_dir, NODE)
    cause = why.get("cause")
    assert cause is not None, f"hookscope why {NODE} found no cause after a real drain: {why}"
    assert (cause["context"], cause["script"], str(cause["job_id"])) == \
        ("prolog_slurmd", str(sc.path("prolog_slurmd", "20-check")), str(job)), cause
