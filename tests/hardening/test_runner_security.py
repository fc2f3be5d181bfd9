"""Runner security, end to end through the real ``hookscope run`` process:
by default the runner runs what slurmd would run and records unsafe
ownership/modes as findings; ``--strict`` (runner.strict = "enforce") refuses
them; a symlink is judged by its target and the target's directories (sshd's
StrictModes); the journal directory is created 0700 root, and secrets in
output are redacted before they are journaled."""

from __future__ import annotations

import json
import os
import stat

import pytest

from emitter import contract
from emitter.layouts import FINDING_PREFIX
from tests.helpers.pipeline import Pipeline, bare_status, write_scripts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root (chown)")


def _records(journal):
    out = []
    for p in sorted(journal.glob(f"*{contract.JOURNAL_SUFFIX}")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line]
    return out


def _ended(recs):
    return [r for r in recs if r[contract.R_KIND] == contract.K_SCRIPT_ENDED]


def _findings(recs):
    (started,) = [r for r in recs if r[contract.R_KIND] == contract.K_HOOK_STARTED]
    return [w[len(FINDING_PREFIX):] for w in started[contract.R_WARNINGS] if w.startswith(FINDING_PREFIX)]


def test_writable_script_runs_by_default_and_is_recorded_as_a_finding(tmp_path):
    marker = tmp_path / "ran"
    d = write_scripts(tmp_path / "prolog.d", {"10-open.sh": f"touch {marker}\nexit 0\n"})
    os.chmod(d / "10-open.sh", 0o775)
    assert bare_status(d) == 0
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 1)  # no --strict flag: the default records
    assert p.returncode == 0, "slurmd runs a group-writable script; so must hookscope by default"
    assert marker.exists()
    recs = _records(pl.node("node001").journal)
    (f,) = _findings(recs)
    assert "10-open.sh" in f and "g+w" in f
    (end,) = _ended(recs)
    assert end[contract.R_EXIT] == 0 and end[contract.R_REFUSED] is None


def test_enforcement_refuses_writable_script(tmp_path):
    marker = tmp_path / "ran"
    d = write_scripts(tmp_path / "prolog.d", {"10-open.sh": f"touch {marker}\nexit 0\n"})
    os.chmod(d / "10-open.sh", 0o775)
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 1, extra_args=["--strict"])
    assert p.returncode == 126
    assert not marker.exists()
    (end,) = _ended(_records(pl.node("node001").journal))
    assert "writable by group" in end[contract.R_REFUSED] and "10-open.sh" in end[contract.R_REFUSED]
    assert end[contract.R_EXIT] == p.returncode


def test_symlink_is_judged_by_its_target(tmp_path):
    """A root-owned 0755 script linked from outside the hook dir runs, even
    under enforcement (issue 11: this drained nodes); a link into a directory
    anybody can write is a finding, refused under enforcement."""
    ran_safe, ran_risky = tmp_path / "ran-safe", tmp_path / "ran-risky"
    safe = write_scripts(tmp_path / "site" / "bin", {"gpu.sh": f"touch {ran_safe}\n"})
    risky = write_scripts(tmp_path / "scratch", {"evil.sh": f"touch {ran_risky}\n"})
    os.chmod(risky, 0o777)
    d = write_scripts(tmp_path / "prolog.d", {"10-ok.sh": "exit 0\n"})
    os.symlink(safe / "gpu.sh", d / "20-gpu.sh")
    os.symlink(risky / "evil.sh", d / "30-evil.sh")
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 2)
    assert p.returncode == 0 and ran_safe.exists() and ran_risky.exists()
    (f,) = _findings(_records(pl.node("node001").journal))
    assert f.startswith(f"directory {risky} is writable by others (mode 0777, bit o+w), above {d / '30-evil.sh'}")
    ran_safe.unlink()
    ran_risky.unlink()
    pl2 = Pipeline(tmp_path / "enforced")
    p = pl2.run_hook("node001", d, 3, extra_args=["--strict"])
    assert p.returncode == 126 and not ran_risky.exists()  # reverse glob: 30-evil first, refused
    (end,) = _ended(_records(pl2.node("node001").journal))
    assert "30-evil.sh" in end[contract.R_PATH] and "o+w" in end[contract.R_REFUSED]


def test_journal_dir_created_0700_root_and_files_0600(tmp_path):
    d = write_scripts(tmp_path / "prolog.d", {"10-ok.sh": "exit 0\n"})
    pl = Pipeline(tmp_path)
    j = pl.node("node001").journal
    assert not j.exists()
    p = pl.run_hook("node001", d, 3)
    assert p.returncode == 0 == bare_status(d)
    st = os.stat(j)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    for f in j.iterdir():
        fst = os.stat(f)
        assert fst.st_uid == 0 and not fst.st_mode & 0o077, (f, oct(fst.st_mode))


def test_secrets_are_redacted_before_the_journal(tmp_path):
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    d = write_scripts(tmp_path / "prolog.d", {
        "10-leak.sh": f'echo "Authorization: Bearer {token}"\necho "password={aws}"\nenv\nexit 4\n'})
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 4, env={"AWS_SECRET_ACCESS_KEY": aws, "MY_API_TOKEN": token},
                    extra_args=["--no-passthrough"])
    assert p.returncode == 4 == bare_status(d)
    raw = b"".join(f.read_bytes() for f in pl.node("node001").journal.glob("*.jsonl"))
    assert b"REDACTED" in raw
    assert token.encode() not in raw and aws.encode() not in raw


def test_journal_file_writable_by_non_root_is_ignored_and_reported(tmp_path, nats_server):
    """A file a user could have written is not evidence: never shipped as a hook
    run, and reported (journal_error) so the audit shows the tampering attempt."""
    d = write_scripts(tmp_path / "prolog.d", {"10-ok.sh": "exit 0\n"})
    pl = Pipeline(tmp_path, nats_server)
    assert pl.run_hook("node001", d, 1).returncode == 0
    # a forged hook file: well-formed records, but owned by uid 1000 and 0666
    assert pl.run_hook("forger", d, 666).returncode == 0
    (forged,) = pl.pending_files("forger")
    target = pl.node("node001").journal / os.path.basename(forged)
    os.rename(forged, target)
    os.chown(target, 1000, 1000)
    os.chmod(target, 0o666)
    forged_hook = target.name.split("-")[1].split(".")[0]
    pl.snapshot_journals()
    p = pl.agent_once("node001")
    pl.collect_once()
    hooks = {h for (h,) in pl.query("SELECT hook_id FROM hook_runs")}
    assert forged_hook not in hooks, "a user-writable journal file must not be shipped as a hook run"
    assert len(hooks) == 1
    errs = pl.query("SELECT record FROM journal WHERE kind = ?", [contract.K_JOURNAL_ERROR])
    assert any(target.name in r for (r,) in errs), (p.stderr, errs)
