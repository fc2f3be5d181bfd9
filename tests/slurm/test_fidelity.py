"""Issue 11, proven on the real slurmd: a hook directory behaves the same when
slurmd runs it bare (``Prolog=/dir/*``) and through ``hookscope-hook``.

Table-driven (fidelity_cases.py).  The first test to need them runs every
selected case in both modes on the session cluster (bare first, then
hookscope: two slurm.conf switches in all, one job per case and mode); each
test then compares its case: node state and drain reason, job state, which
scripts ran in what order, slurmd's view of the status, the probe's process
state and environment byte for byte, and the hook's duration within
fidelity.TOL_ABS_S / TOL_REL.  See docs/slurm-tier.md.
"""

import json
import os
import time

import pytest

from tests.slurm.fidelity import CONTEXT, PARAM, T_BARE, T_HOOKSCOPE, Runner, compare
from tests.slurm.fidelity_cases import CASES
from tests.slurm.scenario import CONFIG_HEADER, hook_binary, hook_missing_reason
from tests.tiers import require

pytestmark = pytest.mark.slurm

HOOKSCOPE = hook_binary().parent / "hookscope"
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"


#: The cases also run through a site's own dispatcher (DeepOps' prolog.sh /
#: epilog.sh style: one command in slurm.conf that runs the parts itself),
#: bare and with each part under ``hookscope exec --`` (issue 11, "platforms
#: with dispatchers of their own").  Timeout cases are left out: slurmd's one
#: timer covers the whole dispatcher in both modes.
DISPATCH_IDS = ("prolog-probe", "epilog-probe", "prolog-locale", "prolog-path", "prolog-sigpipe",
                "prolog-stdin-write", "prolog-stdin-read", "prolog-order", "prolog-fail-stops",
                "epilog-fail-stops", "prolog-exit-255", "prolog-signal-kill", "prolog-signal-term",
                "prolog-bg-holds-stdout", "prolog-sigterm-trap", "prolog-setsid-daemon", "prolog-flood-fail",
                "prolog-invalid-utf8-fail", "prolog-symlink-outside", "prolog-perm-group-writable")
#: mode pairs: (baseline, under hookscope) -> the test function comparing them
PAIRS = {"test_fidelity": ("bare", "hookscope"), "test_dispatch_exec": ("dispatch", "dispatch-exec")}


def _selected(session):
    """mode -> the cases the session's selected tests need, in table order."""
    want = {}
    for item in session.items:
        cs = getattr(item, "callspec", None)
        if item.module.__name__ == __name__ and cs is not None and "case_id" in cs.params:
            for mode in PAIRS[item.originalname]:
                want.setdefault(mode, set()).add(cs.params["case_id"])
    return {mode: [c for c in CASES if c.id in ids] for mode, ids in want.items()}


def _config(base):
    dirs = "\n".join(f'{CONTEXT[h]} = "{base / h}"' for h in ("prolog", "epilog"))
    return (f"{CONFIG_HEADER}; the original is restored afterwards\n"
            "[runner]\n"
            f'journal_dir = "{base / "journal"}"\n'
            # slurmd's per-script budget; the wrapper's own slurm.conf value is larger
            f"timeout_s = {T_BARE}\n"
            "\n[runner.dirs]\n" + dirs + "\n")


def _dispatcher(path, hook_dir, hook, wrap):
    """A site's dispatcher (bash, like DeepOps' prolog.sh): every executable
    part in ascending order, stop at the first failure with its status."""
    prefix = f"{HOOKSCOPE} exec --context {CONTEXT[hook]} -- " if wrap else ""
    path.write_text("#!/bin/bash\n"
                    f"for f in {hook_dir}/*; do\n"
                    '  [ -f "$f" ] && [ -x "$f" ] || continue\n'
                    f'  {prefix}"$f" || exit $?\n'
                    "done\n")
    os.chmod(path, 0o755)


def _switch(c, base, mode, etc_config):
    """Point slurm.conf (and hookscope.toml) at ``mode``; restart slurmd."""
    if mode in ("hookscope", "dispatch-exec"):
        etc_config.parent.mkdir(mode=0o755, exist_ok=True)
        tmp = etc_config.with_suffix(".tmp")
        tmp.write_text(_config(base))
        os.chmod(tmp, 0o644)
        os.replace(tmp, etc_config)
    if mode == "hookscope":
        hooks = {PARAM[h]: str(hook_binary()) for h in ("prolog", "epilog")}
        c.prolog_epilog_timeout = T_HOOKSCOPE
    elif mode == "bare":
        hooks = {PARAM[h]: f"{base / h}/*" for h in ("prolog", "epilog")}
        c.prolog_epilog_timeout = T_BARE
    else:
        hooks = {}
        for h in ("prolog", "epilog"):
            _dispatcher(base / f"dispatch-{h}", base / h, h, wrap=mode == "dispatch-exec")
            hooks[PARAM[h]] = str(base / f"dispatch-{h}")
        c.prolog_epilog_timeout = T_BARE
    c.hooks = hooks
    c.write_conf()
    c.reconfigure()
    c.restart_slurmd()  # PrologEpilogTimeout and SIGPIPE take effect only at start


@pytest.fixture(scope="module")
def fidelity_results(slurm_cluster, etc_config, artifacts_dir, request):
    """case id -> {mode: Obs, "seconds": {mode: harness seconds}}."""
    c = slurm_cluster
    by_mode = _selected(request.session)
    base = c.root / "fidelity"
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    saved = (c.prolog_epilog_timeout, c.slurmd_debug, c.slurmd_ignore_sigpipe, dict(c.hooks), c.poll_max_s)
    results = {case.id: {} for cases in by_mode.values() for case in cases}
    problem = hook_missing_reason()
    c.cancel_all()
    c.resume()
    try:
        c.slurmd_debug, c.slurmd_ignore_sigpipe, c.poll_max_s = "debug2", True, 0.05
        for mode in ("bare", "hookscope", "dispatch", "dispatch-exec"):
            if mode not in by_mode or (problem and mode != "bare"):
                continue
            _switch(c, base, mode, etc_config)
            runner = Runner(c, base, mode)
            for case in by_mode[mode]:
                t0 = time.monotonic()
                results[case.id][mode] = runner.run(case)
                results[case.id].setdefault("seconds", {})[mode] = round(time.monotonic() - t0, 2)
    finally:
        c.prolog_epilog_timeout, c.slurmd_debug, c.slurmd_ignore_sigpipe, c.hooks, c.poll_max_s = saved
        c.write_conf()
        c.reconfigure()
        c.restart_slurmd()
        c.cancel_all()
        c.resume()
        _save(results, artifacts_dir)
    require(problem is None, problem or "")
    return results


def _save(results, artifacts_dir):
    """artifacts/slurm-fidelity.json: every case's outcome per mode (the
    table docs/slurm-tier.md describes), kept whether or not the tests pass
    (not under slurm-tier/: the session fixture replaces that at its end)."""
    out = {}
    for cid, r in results.items():
        out[cid] = {"seconds": r.get("seconds", {})}
        for mode, o in r.items():
            if mode != "seconds":
                out[cid][mode] = {**{k: list(v) if isinstance(v, tuple) else v for k, v in o.outcome().items()},
                                  "duration_s": o.duration_s, "probes": sorted(o.probes), "phases": o.phases}
        for a, b in PAIRS.values():
            if a in r and b in r:
                out[cid][f"differences {a}/{b}"] = compare(BY_ID[cid], r[a], r[b])
    (artifacts_dir / "slurm-fidelity.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def _check(results, case_id, a, b):
    case = BY_ID[case_id]
    r = results[case_id]
    base, hs = r[a], r[b]
    diffs = compare(case, base, hs)
    assert not diffs, (
        f"{case_id} ({case.why}) differs under hookscope ({a} vs {b}):\n  - " + "\n  - ".join(diffs)
        + f"\n{a}: {base.outcome()} in {base.duration_s} s\n{b}: {hs.outcome()} in {hs.duration_s} s"
        + f"\nslurmd ({a}):\n{base.log}\nslurmd ({b}):\n{hs.log}")


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_fidelity(fidelity_results, case_id):
    """Prolog=/dir/* (bare) vs Prolog=hookscope-hook."""
    _check(fidelity_results, case_id, "bare", "hookscope")


@pytest.mark.parametrize("case_id", DISPATCH_IDS)
def test_dispatch_exec(fidelity_results, case_id):
    """A site dispatcher running each part (bare) vs ``hookscope exec -- PART``."""
    _check(fidelity_results, case_id, "dispatch", "dispatch-exec")


def test_case_table_covers_the_issue():
    """At least 40 cases, prolog and epilog alike, every class of issue 11."""
    assert len(CASES) >= 40
    assert {c.hook for c in CASES} == {"prolog", "epilog"}
    ids = " ".join(BY_ID)
    for word in ("probe", "locale", "path", "sigpipe", "stdin-write", "stdin-read", "bg-holds-stdout",
                 "sigterm-trap", "setsid", "symlink-outside", "name-space", "name-unicode", "name-newline",
                 "leading-dot", "tilde", "dpkg-old", "no-shebang", "missing-interpreter", "subdir",
                 "exit-255", "exit-256", "signal", "flood", "invalid-utf8", "200-scripts", "timeout-scope",
                 "timeout-hang", "non-executable", "empty-dir"):
        assert word in ids, word
