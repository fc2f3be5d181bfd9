"""deploy/: the systemd units verify and are hardened, the slurm.conf snippet
wires every hook to hookscope-hook, the k8s YAML parses, the TensorWave
example plans as documented, and gen_auth.py works as a command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emitter import doctor

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ("hookscope-agent.service", "hookscope-collector.service")


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_verifies(unit, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    text = (DEPLOY / "systemd" / unit).read_text()
    # verify checks that ExecStart exists: point it at this checkout's venv
    exe = ROOT / ".venv/bin/hookscope"
    if not exe.exists():
        exe = Path(shutil.which("true"))
    (tmp_path / unit).write_text(text.replace("/opt/hookscope/bin/hookscope", str(exe)))
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 0 and unit not in (p.stdout + p.stderr), p.stdout + p.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_is_hardened(unit):
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in (DEPLOY / "systemd" / unit).read_text().splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["ProtectSystem"] == "strict"
    assert lines["NoNewPrivileges"] == "yes"
    assert lines["PrivateTmp"] == "yes"
    assert lines["CapabilityBoundingSet"] == ""
    assert lines["ReadWritePaths"].startswith("/var/")
    assert lines["Restart"] == "always"


def test_slurm_snippet_points_every_active_hook_at_hookscope_hook():
    conf = doctor.parse_slurm_conf(str(DEPLOY / "slurm/hookscope.conf.snippet"))
    for key in ("prolog", "epilog", "prologslurmctld", "epilogslurmctld"):
        assert os.path.basename(conf[key]) == doctor.HOOK_BINARY, key
    assert int(conf["prologepilogtimeout"]) > 0


def test_k8s_manifests_parse():
    yaml = pytest.importorskip("yaml")
    kinds = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], f
            kinds.append(doc["kind"])
    assert {"ConfigMap", "DaemonSet", "NodeSet", "Secret"} <= set(kinds)


def test_k8s_configmap_holds_a_valid_hookscope_toml():
    yaml = pytest.importorskip("yaml")
    import tomllib

    docs = list(yaml.safe_load_all((DEPLOY / "k8s/configmap.yaml").read_text()))
    cfg = tomllib.loads(docs[0]["data"]["hookscope.toml"])
    from emitter.config import validate_runner

    validate_runner(cfg["runner"], "configmap.yaml")


def test_tensorwave_example_plans_as_documented(tmp_path):
    from emitter.config import load_config

    load_config(str(DEPLOY / "tensorwave/hookscope.toml"))  # valid [runner] section
    (tmp_path / "none.toml").touch()
    p = subprocess.run([sys.executable, "-m", "emitter.cli", "plan", "--layout", "tensorwave",
                        "--dir", str(DEPLOY / "tensorwave/prolog.d")], capture_output=True, text=True,
                       cwd=ROOT, timeout=30, env=dict(os.environ, HOOKSCOPE_CONFIG=str(tmp_path / "none.toml")))
    assert "run" in p.stdout and "10-check-scratch.sh" in p.stdout, p.stdout + p.stderr
    assert "50-check-ib.sh.disabled" in p.stdout.split("skipped:")[1]


def test_gen_auth_command(tmp_path):
    out = tmp_path / "auth"
    p = subprocess.run([sys.executable, str(DEPLOY / "nats/gen_auth.py"), "--cluster", "c1",
                        "--nodes", "gpu[01-03]", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (out / "nodes").iterdir()) == ["gpu01.nk", "gpu02.nk", "gpu03.nk"]
    conf = (out / "auth.conf").read_text()
    assert conf.count("nkey:") == 4 and '"hookscope.spans.c1.gpu02"' in conf
    seed = (out / "nodes/gpu01.nk").read_text()
    p = subprocess.run([sys.executable, str(DEPLOY / "nats/gen_auth.py"), "--cluster", "c1",
                        "--nodes", "gpu[01-04]", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and (out / "nodes/gpu01.nk").read_text() == seed, "existing secrets are kept"
    bad = subprocess.run([sys.executable, str(DEPLOY / "nats/gen_auth.py"), "--cluster", "c1", "--nodes", "",
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no nodes given" in bad.stderr
