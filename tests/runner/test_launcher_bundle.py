"""The lean launchers' hot bundle (emitter/launcher.py ``HOT_MODULES``, ``bundle``,
``_LOAD_HOT``): the modules it holds are the ones a clean hook imports, in an
order their bodies can run in, loaded as importlib would load them, and any
doubt about it (an edited source, another Python, a damaged file) falls back
to the normal imports."""

import ast
import marshal
import shutil
import subprocess
import sys
from pathlib import Path

from emitter import launcher
from tests.runner.conftest import ROOT, mkscript

#: Run after _LOAD_HOT in a fresh ``python -IS``: where each hot module came from,
#: then a cold module imported the normal way through the bundled package.
_CHECK = r"""
import emitter.runner, emitter.config, emitter.hook
from emitter import contract
mods = sorted(n for n in sys.modules if n == "emitter" or n.startswith("emitter."))
print("bundled" if emitter.runner.__spec__ is None else "imported", " ".join(mods))
assert emitter.contract is contract and emitter.runner.P is sys.modules["emitter.process"]
import emitter.runfail
assert emitter.runfail.__spec__ is not None and emitter.runfail.__file__.startswith(emitter.__path__[0])
import select, fcntl, _json, _posixsubprocess  # importlib's own attributes, from the bundle or not
for m in (select, fcntl, _json, _posixsubprocess):
    assert m.__spec__.name == m.__name__ and getattr(m, "__file__", None) == m.__spec__.origin, m
"""


def _load(root, bundle_path):
    code = ("import sys; sys.path.insert(0, %r)\n" % str(root) + launcher._LOAD_HOT.format(bundle=str(bundle_path))
            + _CHECK)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    how, mods = r.stdout.split(" ", 1)
    return how, mods.split()


def test_hot_modules_are_the_ones_a_clean_hook_imports(tmp_path):
    """hookscope-hook with normal imports (no bundle): the emitter modules it ends
    up with are HOT_MODULES (the spool's eviction scan, due once per 5 s per node,
    and a non-root hook's own spool aside); the second run reads the config from its cache, as every later hook does."""
    mkscript(tmp_path / "d", "10-a", "exit 0")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{tmp_path / "j"}"\n[runner.dirs]\nprolog_slurmd = "{tmp_path / "d"}"\n')
    env = {"SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "HOOKSCOPE_CONFIG": str(cfg),
           "HOOKSCOPE_CACHE_DIR": str(tmp_path / "cache"), "SLURM_JOB_ID": "1"}
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from emitter.hook import main; s = main(); "
            "sys.stderr.write(' '.join(n for n in sys.modules if n.startswith('emitter'))); sys.exit(s)")
    for _ in range(2):
        r = subprocess.run([sys.executable, "-I", "-S", "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    got = set(r.stderr.split()) - {"emitter.journal_files", "emitter.userspool"}  # userspool: not root
    assert got == set(launcher.HOT_MODULES), (sorted(got - set(launcher.HOT_MODULES)),
                                              sorted(set(launcher.HOT_MODULES) - got))


def _module_level_emitter_imports(path):
    """The emitter modules a module's body imports (not its functions)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "emitter"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "emitter":
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in launcher.HOT_MODULES}
    return out


def test_hot_modules_run_after_what_their_bodies_import():
    seen = set()
    for name in launcher.HOT_MODULES:
        needs = _module_level_emitter_imports(Path(launcher._source(str(ROOT), name)))
        missing = {m for m in needs if m != name and m not in seen}
        assert not missing, f"{name} imports {sorted(missing)} before HOT_MODULES has run them"
        seen.add(name)


def test_bundle_loads_like_imports_and_falls_back_on_any_doubt(tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(ROOT / "emitter", root / "emitter", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "hot.marshal"
    path.write_bytes(launcher.bundle(str(root)))
    how, mods = _load(root, path)
    assert how == "bundled" and set(launcher.HOT_MODULES) <= set(mods)
    loader, entries = marshal.loads(path.read_bytes().split(b"\n", 1)[1])
    assert loader.co_filename == "<hookscope-hot loader>"
    assert [e[0] for e in entries] == [n for n, _ in launcher._extensions(launcher.HOT_EXTENSIONS)] + list(
        launcher.HOT_MODULES)  # the shared-library extensions first, with no code: importlib loads them

    data = path.read_bytes()
    for damaged in (data[: len(data) // 2],                    # torn
                    data.replace(b"hookscope-hot ", b"hookscope-hot 0", 1),  # another Python's
                    b""):
        path.write_bytes(damaged)
        assert _load(root, path)[0] == "imported"
    (tmp_path / "none").mkdir()
    assert _load(root, tmp_path / "none" / "hot.marshal")[0] == "imported"  # never installed

    path.write_bytes(data)
    journal = root / "emitter" / "journal.py"
    journal.write_text(journal.read_text() + "\n# edited after install\n")
    assert _load(root, path)[0] == "imported"  # an edited source: its own code, not the bundle's


def test_install_writes_the_bundle_the_launchers_load(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    written = launcher.install(str(venv))
    bundle = venv / launcher.BUNDLE
    assert str(bundle) in written and bundle.read_bytes().startswith(b"hookscope-hot %08x\n" % sys.hexversion)
    for name in ("hookscope-hook", "hookscope"):
        assert str(bundle) in (venv / "bin" / name).read_text()
    assert _load(ROOT, bundle)[0] == "bundled"
