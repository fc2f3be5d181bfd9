"""Runner security, end to end through the real ``hookscope run`` process:
strict mode on by default (as root), symlinks out of the hook dir refused with a
clear reason, the journal directory created 0700 root, and secrets in output
redacted before they are journaled."""

from __future__ import annotations

import json
import os
import stat

import pytest

from emitter import contract
from pipeline import Pipeline, bare_status, write_scripts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="strict mode is on by default only as root")


def _records(journal):
    out = []
    for p in sorted(journal.glob(f"*{contract.JOURNAL_SUFFIX}")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line]
    return out


def _ended(recs):
    return [r for r in recs if r[contract.R_KIND] == contract.K_SCRIPT_ENDED]


def test_strict_mode_is_default_and_refuses_writable_script(tmp_path):
    marker = tmp_path / "ran"
    d = write_scripts(tmp_path / "prolog.d", {"10-open.sh": f"touch {marker}\nexit 0\n"})
    os.chmod(d / "10-open.sh", 0o775)
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 1)  # no --strict flag: the default
    assert p.returncode != 0, "a group-writable script must not run as root by default"
    assert not marker.exists()
    (end,) = _ended(_records(pl.node("node001").journal))
    assert "writable by group" in end[contract.R_REFUSED] and "10-open.sh" in end[contract.R_REFUSED]
    assert end[contract.R_EXIT] == p.returncode


def test_symlink_outside_hook_dir_is_refused_with_reason(tmp_path):
    marker = tmp_path / "ran"
    outside = tmp_path / "elsewhere"
    write_scripts(outside, {"evil.sh": f"touch {marker}\n"})
    d = write_scripts(tmp_path / "prolog.d", {"10-ok.sh": "exit 0\n"})
    os.symlink(outside / "evil.sh", d / "20-link.sh")
    # a link that stays inside the dir is fine (ConfigMap mounts look like this)
    os.symlink(d / "10-ok.sh", d / "05-inside.sh")
    pl = Pipeline(tmp_path)
    p = pl.run_hook("node001", d, 2)
    assert p.returncode != 0
    assert not marker.exists()
    ends = _ended(_records(pl.node("node001").journal))
    refused = [e for e in ends if e[contract.R_REFUSED]]
    assert len(refused) == 1 and "points outside" in refused[0][contract.R_REFUSED]
    assert "20-link.sh" in refused[0][contract.R_REFUSED]


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
