"""Config resolution and validation; --export direct never changes the status."""

import os
import subprocess
import sys
import types

import pytest

from emitter import EmitterError
from emitter import config as cf
from emitter import contract as c

from tests.runner.conftest import ROOT, mkscript, records


def test_missing_default_is_empty_and_tomllib_not_imported(tmp_path):
    code = ("import sys; from emitter import config as cf; cf.DEFAULT_PATH = '/nonexistent/h.toml';"
            "assert cf.load_config() == {}; print('tomllib' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != cf.ENV_CONFIG}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_precedence_argument_env_default(tmp_path, monkeypatch):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[runner]\nlayout = "slinky"\n')
    b.write_text('[runner]\nlayout = "run-parts"\n')
    monkeypatch.setenv(cf.ENV_CONFIG, str(b))
    assert cf.load_config(a)["runner"]["layout"] == "slinky"
    assert cf.load_config()["runner"]["layout"] == "run-parts"
    s = cf.runner_settings(cf.load_config(), layout=None, timeout_s=5)
    assert s["layout"] == "run-parts" and s["timeout_s"] == 5 and s["kill_grace_s"] == 1.0


def test_missing_explicit_file_names_it(tmp_path, monkeypatch):
    with pytest.raises(cf.ConfigError, match=r"nope\.toml: file not found; create it"):
        cf.load_config(tmp_path / "nope.toml")
    monkeypatch.setenv(cf.ENV_CONFIG, str(tmp_path / "env.toml"))
    with pytest.raises(EmitterError, match="env.toml"):
        cf.load_config()


@pytest.mark.parametrize("text,match", [
    ("[runner\n", "invalid TOML"),
    ('[runner]\nlayot = "slurm"\n', "unknown key runner.layot"),
    ('[runner]\ntimeout_s = "30"\n', "runner.timeout_s must be int or float"),
    ("[runner]\ntimeout_s = true\n", "must be a number"),
    ("[runner]\ntimeout_s = -1\n", "must not be negative"),
    ('[runner]\nlayout = "pbs"\n', "choose one of slurm"),
    ('[runner]\noutput_on = "sometimes"\n', "choose one of failure"),
    ('[runner]\nstrict = "yes"\n', 'use true, false, "auto"'),
    ('[runner]\nredact = ["(unclosed"]\n', "not a valid regex"),
    ('[runner.dirs]\nprolog = "/x"\n', "unknown context 'prolog'"),
    ("[runner.dirs]\nprolog_slurmd = []\n", "non-empty list"),
    ("runner = 3\n", "must be a table"),
])
def test_invalid_runner_section(tmp_path, text, match):
    p = tmp_path / "h.toml"
    p.write_text(text)
    with pytest.raises(cf.ConfigError, match=match) as ei:
        cf.load_config(p)
    assert str(p) in str(ei.value)


def test_other_sections_are_left_to_their_owners(tmp_path):
    p = tmp_path / "h.toml"
    p.write_text('[agent]\nanything = 1\n[collector]\nx = "y"\n[dashboard]\n')
    assert cf.load_config(p)["agent"] == {"anything": 1}


def test_context_dirs():
    s = cf.runner_settings({"runner": {"dirs": {"prolog_slurmd": ["/a", "/b"], "epilog_slurmd": "/e"}}})
    assert cf.context_dirs(s, "prolog_slurmd") == ["/a", "/b"]
    assert cf.context_dirs(s, "epilog_slurmd") == ["/e"]
    assert cf.context_dirs(s, "prolog_task") == [cf.DEFAULT_DIRS["prolog_task"]]
    # every context Slurm starts has a default directory (boot-time init contexts are the platform's)
    assert set(cf.DEFAULT_DIRS) == set(c.CONTEXTS) - set(getattr(c, "INIT_CONTEXTS", ()))


def test_every_runner_key_documented():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in cf.RUNNER_KEYS if f"{k} =" not in doc and k != "dirs"]
    assert not missing, f"docs/config.md lacks {missing}"


@pytest.mark.parametrize("behaviour", ["raises", "missing", "exits"])
def test_export_direct_never_changes_status(tmp_path, monkeypatch, capfd, behaviour):
    from emitter import runcli

    calls = []
    if behaviour == "missing":
        monkeypatch.setitem(sys.modules, "emitter.direct", None)  # import fails
    else:
        mod = types.ModuleType("emitter.direct")

        def ship(**kw):
            calls.append(kw)
            if behaviour == "raises":
                raise ConnectionRefusedError("no server")
            raise SystemExit(0)

        mod.ship = ship
        monkeypatch.setitem(sys.modules, "emitter.direct", mod)
    mkscript(tmp_path / "d", "a", "exit 6")
    monkeypatch.setenv(cf.ENV_CONFIG, str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    jdir = tmp_path / "j"
    status = runcli.run_main(["--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--journal", str(jdir),
                              "--export", "direct", "--export-deadline", "0.2", "--no-passthrough"])
    assert status == 6
    err = capfd.readouterr().err
    assert err.count("--export direct failed") == 1 and "stays in the spool" in err
    if behaviour != "missing":
        (kw,) = calls
        assert kw["deadline_s"] == 0.2 and kw["journal_dir"] == str(jdir) and os.path.exists(kw["hook_file"])
        assert records(jdir)[-1][c.R_KIND] == c.K_HOOK_ENDED, "hook_ended is written before shipping"


def test_parse_cache_skips_tomllib_and_follows_edits(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOOKSCOPE_CACHE_DIR", str(cache))
    p = tmp_path / "h.toml"
    p.write_text('[runner]\nlayout = "slinky"\n')
    assert cf.load_config(p)["runner"]["layout"] == "slinky"
    (entry,) = cache.iterdir()
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    code = ("import sys; from emitter import config as cf; c = cf.load_config(sys.argv[1]);"
            "print(c['runner']['layout'], 'tomllib' in sys.modules)")
    env = dict(os.environ, HOOKSCOPE_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", code, str(p)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["slinky", "False"], out.stderr
    p.write_text('[runner]\nlayout = "run-parts"\n')  # new size/mtime/ctime: parsed again
    assert cf.load_config(p)["runner"]["layout"] == "run-parts"
    p.write_text('[runner]\nlayout = "bogus"\n')
    with pytest.raises(cf.ConfigError, match="bogus"):
        cf.load_config(p)


def test_parse_cache_not_trusted_if_others_can_write_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOOKSCOPE_CACHE_DIR", str(cache))
    p = tmp_path / "h.toml"
    p.write_text('[runner]\nlayout = "slinky"\n')
    cf.load_config(p)
    (entry,) = cache.iterdir()
    import marshal

    stamp, cfg = marshal.loads(entry.read_bytes())
    entry.write_bytes(marshal.dumps((stamp, {"runner": {"layout": "tensorwave"}})))
    assert cf.load_config(p)["runner"]["layout"] == "tensorwave"  # ours, 0600: trusted
    os.chmod(entry, 0o666)
    assert cf.load_config(p)["runner"]["layout"] == "slinky"  # writable by others: ignored, re-parsed


def test_parse_cache_is_bounded(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOOKSCOPE_CACHE_DIR", str(cache))
    for i in range(cf._CACHE_KEEP + 10):
        p = tmp_path / f"h{i}.toml"
        p.write_text("[runner]\n")
        cf.load_config(p)
    assert len(list(cache.iterdir())) <= cf._CACHE_KEEP
