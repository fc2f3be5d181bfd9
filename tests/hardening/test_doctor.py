"""``hookscope doctor`` on a healthy and on a broken node set-up, through the
real CLI, against a real nats-server with per-node NKey auth."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.servers import NatsServer
from emitter import contract, doctor
from tests.hardening.secure import connect, load_gen_auth, run

ROOT = Path(__file__).resolve().parents[2]
HOOKSCOPE = [sys.executable, "-m", "emitter.cli"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root (chown)")


def _doctor(*args, env=None, timeout=30):
    e = dict(os.environ, HOOKSCOPE_CONFIG="", **(env or {}))
    e.pop("HOOKSCOPE_CONFIG")
    p = subprocess.run([*HOOKSCOPE, "doctor", *args], capture_output=True, text=True, cwd=ROOT,
                       env=e, timeout=timeout)
    return p


def _by_status(report, status):
    return [c for c in report["checks"] if c["status"] == status]


@pytest.fixture
def healthy(tmp_path):
    """A node set up by the book: returns (args, server)."""
    gen = load_gen_auth()
    gen.generate("gpu1", ["node001"], tmp_path / "auth", "nkey")
    srv = NatsServer(store_dir=tmp_path / "nats", config=(tmp_path / "auth/auth.conf").read_text())
    srv.start()
    try:
        async def mkstream():
            from nats.js.api import StreamConfig

            seed = (tmp_path / "auth/collector.nk").read_text().strip()
            nc = await connect(srv.url, nkeys_seed_str=seed)
            try:
                await nc.jetstream(timeout=5).add_stream(
                    StreamConfig(name=contract.STREAM_NAME, subjects=list(contract.STREAM_SUBJECTS)))
            finally:
                await nc.close()

        run(mkstream())
        prolog = tmp_path / "prolog.d"
        prolog.mkdir(mode=0o755)
        os.chmod(prolog, 0o755)
        script = prolog / "10-ok.sh"
        script.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(script, 0o755)
        journal = tmp_path / "journal"
        journal.mkdir(mode=0o700)
        os.chmod(journal, 0o700)
        hook = ROOT / ".venv/bin/hookscope-hook"
        slurm_conf = tmp_path / "slurm.conf"
        slurm_conf.write_text(f"ClusterName=gpu1\nPrologEpilogTimeout=300\nProlog={hook}\nEpilog={hook}\n"
                              "NodeName=node[001-004] CPUs=8 State=UNKNOWN\n")
        cfg = tmp_path / "hookscope.toml"
        cfg.write_text(f'[runner]\nnode = "node001"\njournal_dir = "{journal}"\ntimeout_s = 60\n'
                       f'[runner.dirs]\nprolog_slurmd = "{prolog}"\n'
                       f'[agent]\nnats = "{srv.url}"\nnkey = "{tmp_path / "auth/nodes/node001.nk"}"\n')
        yield ["--config", str(cfg), "--slurm-conf", str(slurm_conf)], srv, tmp_path
    finally:
        srv.stop()


def test_healthy_node_passes(healthy):
    args, _srv, _ = healthy
    p = _doctor(*args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "FAIL" not in p.stdout
    assert "logged in as node node001; stream HOOKSCOPE" in p.stdout, p.stdout
    assert "Prolog, Epilog -> hookscope-hook" in p.stdout
    rep = json.loads(_doctor(*args, "--json").stdout)
    assert not _by_status(rep, "FAIL")
    names = {c["name"] for c in _by_status(rep, "OK")}
    assert {"config", "hook-dir", "journal", "creds", "nats", "gpu", "slurm.conf"} <= names


@ROOT_ONLY
def test_broken_node_fails_with_fixes(healthy, tmp_path):
    args, srv, tmp = healthy
    prolog = tmp / "prolog.d"
    os.chmod(prolog / "10-ok.sh", 0o775)  # group-writable
    scratch = tmp / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o777)  # anybody can swap the link's target
    outside = scratch / "elsewhere.sh"
    outside.write_text("#!/bin/sh\n")
    os.chmod(outside, 0o755)
    os.symlink(outside, prolog / "20-link.sh")
    fine = tmp / "site-bin"
    fine.mkdir(mode=0o755)
    os.chmod(fine, 0o755)
    (fine / "gpu.sh").write_text("#!/bin/sh\n")
    os.chmod(fine / "gpu.sh", 0o755)
    os.symlink(fine / "gpu.sh", prolog / "15-gpu.sh")  # root 0755 via a link: fine, as for sshd
    (prolog / "30-noexec.sh").write_text("#!/bin/sh\n")
    os.chmod(prolog / "30-noexec.sh", 0o644)
    journal = tmp / "journal"
    os.chmod(journal, 0o755)
    forged = journal / f"{'0' * 20}-{'a' * 16}{contract.JOURNAL_SUFFIX}"
    forged.write_text("{}\n")
    os.chown(forged, 1000, 1000)
    (journal / "lost").write_text("7 1700000000000000000\n")
    bad_seed = tmp / "bad.nk"
    bad_seed.write_text("SUNOTAVALIDSEED\n")
    os.chmod(bad_seed, 0o644)
    slurm_conf = tmp / "slurm-broken.conf"
    slurm_conf.write_text("Prolog=/etc/slurm/prolog.d/*\nEpilog=/nonexistent/hookscope-hook\n")
    cfg = tmp / "broken.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{journal}"\n[runner.dirs]\nprolog_slurmd = "{prolog}"\n'
                   f'epilog_slurmd = "{tmp / "missing.d"}"\n'
                   f'[agent]\nnats = "{srv.url}"\nnkey = "{bad_seed}"\n')
    p = _doctor("--config", str(cfg), "--slurm-conf", str(slurm_conf), "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    fails = " | ".join(c["message"] for c in _by_status(rep, "FAIL"))
    warns = " | ".join(c["message"] for c in _by_status(rep, "WARN"))
    assert "10-ok.sh is writable by group (mode 0775, bit g+w)" in fails
    assert f"directory {scratch} is writable by others (mode 0777, bit o+w)" in fails
    assert "15-gpu.sh" not in fails
    assert "30-noexec.sh: not executable (mode 0o644): status 127" in fails
    assert "missing.d does not exist" in fails
    assert "mode 0755; it must be root, 0700" in fails
    assert "could have written" in fails and "uid 1000" in fails
    assert "not a valid user seed" in fails
    assert "login to" in fails  # the server refuses the node without a valid key
    assert "Epilog=/nonexistent/hookscope-hook: no executable there" in fails
    assert "Prolog=/etc/slurm/prolog.d/* bypasses hookscope" in warns
    assert "lost says 7 record(s)" in warns
    assert all(c["fix"] for c in _by_status(rep, "FAIL")), "every FAIL says how to fix it"


def test_unreachable_and_silent_nats_obey_the_deadline(tmp_path):
    # a port nobody listens on, and a listener that never says INFO
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(5)
    try:
        silent = f"nats://127.0.0.1:{lst.getsockname()[1]}"
        s = doctor.Setup(nats_urls=[silent], deadline_s=0.5)
        t0 = time.monotonic()
        res = doctor.check_nats(s)
        assert time.monotonic() - t0 < 2.0
        assert res[0].status == doctor.FAIL and "unreachable within 0.5s" in res[0].message
    finally:
        lst.close()


def test_no_hookscope_in_slurm_conf_fails(tmp_path):
    conf = tmp_path / "slurm.conf"
    inc = tmp_path / "hooks.conf"
    inc.write_text("Prolog=/usr/local/sbin/prolog.sh   # site script\n")
    conf.write_text(f"ClusterName=c\ninclude {inc.name}\n")
    res = doctor.check_slurm_conf(doctor.Setup(slurm_conf=str(conf)))
    st = {(r.status, r.message.split(":")[0]) for r in res}
    assert (doctor.FAIL, str(conf)) in st
    assert any(r.status == doctor.WARN and "Prolog=/usr/local/sbin/prolog.sh bypasses" in r.message for r in res)


def test_invalid_config_is_a_fail_naming_the_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[runner]\nlayout = \n")
    p = _doctor("--config", str(cfg), "--no-nats", "--json")
    assert p.returncode == 1
    rep = json.loads(p.stdout)
    c = [c for c in rep["checks"] if c["name"] == "config"][0]
    assert c["status"] == "FAIL" and str(cfg) in c["message"]


def test_hung_gpu_library_is_abandoned():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        doctor._call_with_deadline(lambda: time.sleep(5), 0.3)
    assert time.monotonic() - t0 < 1.0


def test_agent_section_checked_as_the_agent_reads_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\nnats = "nats://127.0.0.1:1"\nnkey_file = "/etc/hookscope/node.nk"\n')
    s, pre = doctor.resolve(str(cfg), skip_nats=True)
    fails = [c for c in pre if c.status == doctor.FAIL]
    assert fails and "unknown key agent.nkey_file" in fails[0].message


@ROOT_ONLY
def test_untrusted_config_and_credentials_fail(tmp_path):
    """Issue 12.4: a config or credential file another user owns or can write is a FAIL naming the bit."""
    seed = tmp_path / "node.nk"
    seed.write_text("SUNOTAVALIDSEED\n")
    os.chmod(seed, 0o660)
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'[agent]\nnkey = "{seed}"\n')
    os.chown(cfg, 65534, 65534)
    os.chmod(cfg, 0o666)
    p = _doctor("--config", str(cfg), "--no-nats", "--json")
    assert p.returncode == 1
    fails = [c for c in json.loads(p.stdout)["checks"] if c["status"] == "FAIL"]
    (c,) = [c for c in fails if c["name"] == "config"]
    assert str(cfg) in c["message"] and "owned by uid 65534" in c["message"] and "o+w" in c["message"]
    assert "ignores it" in c["message"] and c["fix"]
    s = doctor.Setup(nkey=str(seed))
    cred = doctor.check_credentials(s)[0]
    assert cred.status == doctor.FAIL and "g+w" in cred.message and str(seed) in cred.fix


def test_slurm_conf_timeout_must_cover_every_script(tmp_path):
    """Bare slurmd gives each script PrologEpilogTimeout; wrapped, one timer covers them all."""
    d = tmp_path / "prolog.d"
    d.mkdir()
    for name in ("10-a", "20-b"):
        (d / name).write_text("#!/bin/sh\nsleep 5\n")
        os.chmod(d / name, 0o755)
    hook = tmp_path / "hookscope-hook"
    hook.write_text("#!/bin/sh\n")
    os.chmod(hook, 0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"Prolog={hook}\nPrologEpilogTimeout=8\nPrologFlags=Alloc,RunInJob\n")
    s = doctor.Setup(slurm_conf=str(conf), hook_dirs={"prolog_slurmd": [str(d)]}, timeout_s=None,
                     kill_grace_s=0.01)
    res = doctor.check_slurm_conf(s)
    (t,) = [r for r in res if "Timeout" in r.message]
    assert t.status == doctor.FAIL and "2 script(s)" in t.message and "PrologTimeout=18" in t.fix
    assert any("RunInJob" in r.message and "cgroup" in r.message for r in res)
    conf.write_text(f"Prolog={hook}\nPrologEpilogTimeout=8\nPrologTimeout=18\n")
    s.timeout_s = 8
    (t,) = [r for r in doctor.check_slurm_conf(s) if "Timeout" in r.message]
    assert t.status == doctor.OK


def test_user_spools_are_checked_as_the_agent_will(tmp_path):
    """The per-owner spools of non-root hook runs: missing parent (WARN), a
    spool owned by another uid (FAIL), a sound one (OK)."""
    import os

    from emitter.doctor_spools import check_user_spools

    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    journal = tmp_path / "journal"
    journal.mkdir(mode=0o700)
    s = doctor.Setup(journal_dir=str(journal))
    (c,) = check_user_spools(s)
    assert c.status == doctor.WARN and "journal.users" in c.message
    parent = tmp_path / "journal.users"
    parent.mkdir()
    os.chmod(parent, 0o1733)
    spool = parent / "1000"
    spool.mkdir(mode=0o700)  # root's, but named for uid 1000: a forgery's shape
    (c,) = check_user_spools(s)
    assert c.status == doctor.FAIL and "not uid 1000" in c.message
    os.chown(spool, 1000, 1000)
    (c,) = check_user_spools(s)
    assert c.status == doctor.OK and "1 per-uid spool" in c.message
    os.chmod(parent, 0o777)  # writable by all without the sticky bit
    (c,) = check_user_spools(s)
    assert c.status == doctor.FAIL and "sticky" in c.message
