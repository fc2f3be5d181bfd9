"""Hook scenarios for the real-Slurm tier: the same scripts, two deployments.

``bare``: slurm.conf names the scripts themselves, as a site without
hookscope would (Debian's 22.05 globs only ``Prolog=``/``Epilog=``;
``PrologSlurmctld``, ``EpilogSlurmctld`` and ``TaskProlog`` take exactly one
program, so those directories hold one script in every scenario).

``hookscope``: slurm.conf names ``hookscope-hook`` (no arguments) in all five
slots, and ``/etc/hookscope/hookscope.toml`` maps each context to the same
directory.  slurmd starts hooks with a scrubbed environment (no PATH, no
HOOKSCOPE_CONFIG), so the production default config path is the only way to
configure it, which is why the fixture writes that file.

Every script appends ``<context> <SLURM_JOB_ID>`` to a marker file, so "which
contexts ran, for which job" is observable without the journal, in both modes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from emitter import contract

#: hookscope context -> slurm.conf parameter (the five the issue names).
CONTEXT_PARAM = {
    "prolog_slurmd": "Prolog",
    "epilog_slurmd": "Epilog",
    "prolog_slurmctld": "PrologSlurmctld",
    "epilog_slurmctld": "EpilogSlurmctld",
    "prolog_task": "TaskProlog",
}
#: Parameters Slurm 22.05 expands as a glob (reverse glob order, stop at first failure).
GLOB_PARAMS = frozenset({"Prolog", "Epilog"})

CONFIG_PATH = Path("/etc/hookscope/hookscope.toml")
#: First line of the config the tests write (so a leftover is recognised).
CONFIG_HEADER = "# written by tests/slurm (the real-Slurm tier)"

#: Slurm's own prolog/epilog limit (s) in the test cluster.
PROLOG_EPILOG_TIMEOUT = 10
#: Runner budget (s) in the hookscope deployment; well below PrologEpilogTimeout.
RUNNER_BUDGET_S = 3
RUNNER_GRACE_S = 0.5


def hook_binary() -> Path:
    """The ``hookscope-hook`` console script of this venv (absolute, as slurm.conf needs)."""
    return Path(sys.executable).parent / "hookscope-hook"


def hook_missing_reason() -> str | None:
    hb = hook_binary()
    if not (hb.is_file() and os.access(hb, os.X_OK)):
        return f"{hb} is not installed (pip install -e . in the venv)"
    try:
        import emitter.hook  # noqa: F401  (importable = the runner is there)
    except ImportError as exc:
        return f"the runner is not available: emitter.hook cannot be imported ({exc})"
    return None


def system_python_launcher(path: Path) -> str | None:
    """Write a ``hookscope-hook`` launcher that runs on Debian's /usr/bin/python3
    (what a site installs under /opt/hookscope), for hooks that run as the
    job's user; None if that cannot work here (reason in the return of
    ``launcher_problem``)."""
    root = Path(__file__).resolve().parents[2]
    path.write_text("#!/usr/bin/python3 -IS\n"
                    "# hookscope-hook for every user: Debian's Python, this checkout\n"
                    "import sys\n"
                    f"sys.path.insert(0, {str(root)!r})\n"
                    "from emitter.hook import main\n"
                    "sys.exit(main())\n")
    os.chmod(path, 0o755)
    return str(path)


def launcher_problem(user: str = "nobody") -> str | None:
    """Why a job user could not run hookscope-hook from this checkout, or None."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    code = "import sys; assert sys.version_info >= (3, 11); sys.path.insert(0, %r); import emitter.hook" % str(root)
    try:
        p = subprocess.run(["/usr/bin/python3", "-IS", "-c", code], user=user,
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run /usr/bin/python3 as {user}: {exc}"
    if p.returncode != 0:
        return (f"user {user} cannot import emitter.hook from {root} with /usr/bin/python3 "
                f"(3.11+ needed, checkout must be world-readable): {p.stderr.strip()[-300:]}")
    return None


def marker_script(context: str, marker: Path, body: str = "exit 0\n", tag: str = "") -> str:
    """A hook script that first records that it ran, then does ``body``.

    Absolute paths only: slurmd gives prologs no PATH."""
    return ("#!/bin/sh\n"
            f"/bin/echo \"{context} $SLURM_JOB_ID {tag}\" >> {marker}\n"
            + body)


@dataclass
class Scenario:
    """A set of hook directories, one per context, built under ``base``.

    ``scripts`` maps context -> {file name: script text, or (text, mode)}.
    A text without ``#!`` is a body: it gets ``#!/bin/sh`` and a first line
    that appends ``<context> <job id> <file name>`` to the marker file.
    Contexts left out get one harmless marker script (``{}`` leaves the
    directory empty), so every slot that
    hookscope fills has something to run (an empty directory is a failure
    under the ``slurm`` layout, exactly as an empty glob is for slurmd)."""

    base: Path
    scripts: dict = field(default_factory=dict)
    budget_s: float = RUNNER_BUDGET_S  # [runner] timeout_s; 0 = none
    hook: str | None = None  # what slurm.conf names in hookscope mode (default: hook_binary())
    runner_extra: dict = field(default_factory=dict)  # more [runner] keys, e.g. {"strict": "enforce"}

    def __post_init__(self):
        self.base = Path(self.base)
        self.marker = self.base / "ran.txt"
        self.journal_dir = self.base / "journal"
        self.dirs = {}
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.marker.touch()
        os.chmod(self.marker, 0o666)  # TaskProlog runs as the job's user
        for ctx in CONTEXT_PARAM:
            d = self.base / ctx
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)
            self.dirs[ctx] = d
            files = self.scripts[ctx] if ctx in self.scripts else {"50-ok": "exit 0\n"}
            for name, spec in files.items():
                text, mode = (spec if isinstance(spec, tuple) else (spec, 0o755))
                if not text.startswith("#!"):
                    # A script body: prefix the shebang and the marker line.
                    text = marker_script(ctx, self.marker, text, tag=name)
                p = d / name
                p.write_text(text)
                os.chmod(p, mode)

    def path(self, context: str, name: str) -> Path:
        return self.dirs[context] / name

    # ---------------------------------------------------------- deployments
    def slurm_hooks(self, mode: str) -> dict:
        """slurm.conf hook lines for ``mode`` ("bare" or "hookscope")."""
        if mode == "hookscope":
            hb = str(self.hook or hook_binary())
            return {param: hb for param in CONTEXT_PARAM.values()}
        if mode != "bare":
            raise ValueError(mode)
        out = {}
        for ctx, param in CONTEXT_PARAM.items():
            d = self.dirs[ctx]
            if param in GLOB_PARAMS:
                out[param] = f"{d}/*"
            else:
                names = sorted(os.listdir(d))
                if len(names) != 1:
                    raise ValueError(f"{param} takes one program in Slurm 22.05; {d} holds {names}")
                out[param] = str(d / names[0])
        return out

    def runner_config(self) -> str:
        lines = [
            CONFIG_HEADER + "; the original is restored afterwards",
            "[runner]",
            f"journal_dir = {json.dumps(str(self.journal_dir))}",
            f"timeout_s = {self.budget_s}",
            f"kill_grace_s = {RUNNER_GRACE_S}",
            *[f"{k} = {json.dumps(v)}" for k, v in self.runner_extra.items()],
            "",
            "[runner.dirs]",
        ]
        lines += [f"{ctx} = {json.dumps(str(d))}" for ctx, d in self.dirs.items()]
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------- observations
    def ran(self) -> list[tuple[str, str, str]]:
        """(context, job id, script name) for every script run so far, in order."""
        return [tuple((line.split(" ", 2) + ["", ""])[:3])
                for line in self.marker.read_text().splitlines() if line.strip()]

    def records(self) -> list[dict]:
        """Every journal record (all files), in chain order, hash-checked."""
        recs = []
        if not self.journal_dir.is_dir():
            return recs
        for p in sorted(self.journal_dir.glob("*" + contract.JOURNAL_SUFFIX)):
            for line in p.read_text().splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                assert r[contract.R_HASH] == contract.record_hash(r), f"bad hash in {p}: {line}"
                r["_file"] = p.name
                recs.append(r)
        recs.sort(key=lambda r: r[contract.R_SEQ])
        return recs

    def hooks(self) -> dict[str, list[list[dict]]]:
        """context -> list of hook runs, each the list of its records."""
        by_hook: dict[str, list[dict]] = {}
        for r in self.records():
            by_hook.setdefault(r[contract.R_HOOK_ID], []).append(r)
        out: dict[str, list[list[dict]]] = {}
        for recs in by_hook.values():
            start = next((r for r in recs if r[contract.R_KIND] == contract.K_HOOK_STARTED), None)
            if start is not None:
                out.setdefault(start[contract.R_CONTEXT], []).append(recs)
        return out

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def kinds(recs, kind):
    return [r for r in recs if r[contract.R_KIND] == kind]


def check_chain(recs: list[dict]) -> None:
    """seq strictly +1 and prev = hash of the previous record (one node)."""
    for a, b in zip(recs, recs[1:]):
        assert b[contract.R_SEQ] == a[contract.R_SEQ] + 1, (a, b)
        assert b[contract.R_PREV] == a[contract.R_HASH], (a, b)
