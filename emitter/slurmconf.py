"""What slurm.conf says about hooks, for ``hookscope plan`` and ``doctor``.

Slurm 22.05 to 25.11:

- hook lines: ``Prolog=``, ``Epilog=``, ... From 24.05 a key may appear on
  several lines; slurmd expands each glob, reverses that list, and runs the
  lists in config order.  Earlier versions keep one line.
- timeouts: ``PrologEpilogTimeout`` (16-bit seconds; unset = wait for ever)
  covers Prolog, Epilog, PrologSlurmctld and EpilogSlurmctld.  25.05 adds
  ``PrologTimeout`` and ``EpilogTimeout``, which fall back to it.  slurmd gives
  *each* script of a glob the full timeout (one ``run_command()`` per match);
  a wrapper is one command, so slurmd's one timer covers all its scripts.
- ``PrologFlags=RunInJob`` (23.11+) runs the prolog inside the job's cgroup
  (and so the wrapper and everything it starts).

Pure functions over the parsed file (:func:`read` does the I/O).
"""

import os
import re

_KV = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")
HOOK_KEYS = ("Prolog", "Epilog", "PrologSlurmctld", "EpilogSlurmctld", "TaskProlog",
             "TaskEpilog", "SrunProlog", "SrunEpilog")
#: context -> the slurm.conf key of its hook
CONTEXT_KEY = {
    "prolog_slurmd": "Prolog", "epilog_slurmd": "Epilog",
    "prolog_slurmctld": "PrologSlurmctld", "epilog_slurmctld": "EpilogSlurmctld",
    "prolog_task": "TaskProlog", "epilog_task": "TaskEpilog",
    "prolog_srun": "SrunProlog", "epilog_srun": "SrunEpilog",
}
#: Fixed allowance for the wrapper itself (start-up, planning, journal) per hook.
WRAPPER_MARGIN_S = 1.0


def read(path, _depth=0):
    """{lowercased key: [values in file order]}; follows ``Include`` (relative to the file)."""
    out = {}
    base = os.path.dirname(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.lower().startswith("include ") and _depth < 5:
                for inc in line.split(None, 1)[1].split():
                    inc = inc if os.path.isabs(inc) else os.path.join(base, inc)
                    if os.path.exists(inc):
                        for k, v in read(inc, _depth + 1).items():
                            out.setdefault(k, []).extend(v)
                continue
            m = _KV.match(line)
            if m and " " not in m.group(2):  # node/partition lines hold several pairs: not ours
                out.setdefault(m.group(1).lower(), []).append(m.group(2).strip('"'))
    return out


def last(conf, key):
    """The value slurmd uses for a single-valued key (the last line wins)."""
    v = conf.get(key.lower())
    return v[-1] if v else None


def hook_values(conf, key):
    """Every ``key=`` line in config order (24.05+: several Prolog= lines all run)."""
    return list(conf.get(key.lower(), []))


def _seconds(v):
    if v is None or not v.strip().isdigit():
        return None  # unset, or UNLIMITED/INFINITE: slurmd waits for ever
    n = int(v)
    return None if n >= 65534 else n  # NO_VAL16 / INFINITE16


def hook_timeout(conf, context):
    """(seconds or None, the key that set it) for the hooks of ``context``.

    None: no timeout applies (unset, unlimited, or a context Slurm does not time).
    """
    kind = context.split("_", 1)[0]  # prolog | epilog
    if context not in ("prolog_slurmd", "epilog_slurmd", "prolog_slurmctld", "epilog_slurmctld"):
        return None, None
    specific = "PrologTimeout" if kind == "prolog" else "EpilogTimeout"
    for key in (specific, "PrologEpilogTimeout"):
        v = last(conf, key)
        if v is not None:
            return _seconds(v), key
    return None, None


def prolog_flags(conf):
    v = last(conf, "PrologFlags") or ""
    return {f.strip().lower() for f in v.split(",") if f.strip()}


def wrapper_timeout(n_scripts, per_script_s, kill_grace_s=0.0):
    """Seconds slurm.conf must allow a wrapper running ``n_scripts`` that each
    may take ``per_script_s`` (what bare slurmd gives each), rounded up.

    Every script may use its whole budget and then its SIGTERM->SIGKILL grace;
    the wrapper needs WRAPPER_MARGIN_S on top.
    """
    need = round(max(1, n_scripts) * (per_script_s + kill_grace_s) + WRAPPER_MARGIN_S, 6)  # no 12.000000000002
    return int(need) + (need > int(need))


def timeout_verdict(conf, context, n_scripts, runner_timeout_s, kill_grace_s):
    """(status, message, fix) about slurm.conf's timeout for a wrapped ``context``.

    status: "OK", "WARN" or "FAIL" (slurm.conf's value would cut off a run
    that bare slurmd would finish); None when no timeout applies at all.
    """
    t, key = hook_timeout(conf, context)
    if t is None and not runner_timeout_s:
        return None
    n_scripts = max(1, n_scripts)  # an empty directory still costs one run's worth
    per = float(runner_timeout_s or t)
    need = wrapper_timeout(n_scripts, per, kill_grace_s)
    hook = CONTEXT_KEY.get(context, context)
    setting = f"{key}={t}" if key else "no timeout in slurm.conf"
    basis = (f"{n_scripts} script(s) x ({per:g}s per script + {kill_grace_s:g}s grace) + "
             f"{WRAPPER_MARGIN_S:g}s = {need}s")
    specific = "PrologTimeout" if context.startswith("prolog") else "EpilogTimeout"
    fix = (f"set {specific}={need} (Slurm 25.05+) or PrologEpilogTimeout={need} in slurm.conf"
           + ("" if runner_timeout_s else f", and runner.timeout_s = {t} so each script keeps the {t}s "
                                          "bare slurmd gave it"))
    if t is None:
        return "OK", f"{hook}: {setting}; hookscope limits each script to {per:g}s ({basis} at most)", ""
    if t < need:
        return ("FAIL", f"{hook}: {setting} is one timer for the whole wrapper, which needs {basis}: slurmd "
                        f"would kill hookscope-hook in the middle of a run that bare slurmd (one timer per "
                        f"script) lets finish", fix)
    return "OK", f"{hook}: {setting} >= {basis}", ""


def glob_dirs(values):
    """([runner.dirs] entries, problems) equivalent to a key's slurm.conf lines.

    ``/dir/*`` is the directory (the ``slurm`` layout reverses each directory,
    and a list runs in order: 24.05's several lines); a plain path is a single
    script.  Any other glob has no exact equivalent and is a problem.
    """
    dirs, problems = [], []
    for v in values:
        if v.endswith("/*") and not any(ch in v[:-2] for ch in "*?["):
            dirs.append(v[:-2] or "/")
        elif any(ch in v for ch in "*?["):
            problems.append(f"{v}: only DIR/* globs have a [runner.dirs] equivalent")
        elif os.path.basename(v).startswith("hookscope-hook"):
            continue
        else:
            dirs.append(v)
    return dirs, problems

