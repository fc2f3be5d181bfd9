"""``hookscope doctor``: check a node's hookscope set-up and say how to fix it.

Library first: every check is a function returning a list of :class:`Check`
(status OK/WARN/FAIL, what is wrong, how to fix it); :func:`run_checks` runs
them all, each guarded so a crashing check reports FAIL instead of killing the
doctor; the click command only prints.  Every network call has a deadline.
This module fills a :class:`Setup` from the components' own settings objects
(``RunnerSettings``, ``AgentSettings``: no resolver of its own, so it checks
what they would use) and reads slurm.conf's hook lines; the node checks live
in :mod:`emitter.doctor_checks` and are re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from emitter import natsauth
from emitter.natsauth import split_urls
# Re-exported: callers and tests keep using emitter.doctor.<name>.
from emitter.doctor_checks import (  # noqa: F401
    FAIL, OK, WARN, Check, Setup, _call_with_deadline, check_credentials, check_gpu,
    check_hook_dirs, check_journal, check_nats)

DEFAULT_CONFIG = "/etc/hookscope/hookscope.toml"
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
#: configless slurmd keeps the pulled config here (Slurm 20.02+)
CONFIGLESS_CACHES = ("/run/slurm/conf/slurm.conf", "/var/spool/slurmd/conf-cache/slurm.conf")
DEFAULT_NATS = "nats://127.0.0.1:4222"
HOOK_KEYS = ("Prolog", "Epilog", "PrologSlurmctld", "EpilogSlurmctld", "TaskProlog",
             "TaskEpilog", "SrunProlog", "SrunEpilog")
HOOK_BINARY = "hookscope-hook"


def resolve(config_path=None, slurm_conf=None, journal=None, nats=None, creds=None,
            hook_dirs=(), deadline_s=2.0, skip_nats=False) -> tuple[Setup, list[Check]]:
    """Build the Setup; the config check's results come back with it."""
    checks: list[Check] = []
    s = Setup(deadline_s=deadline_s, skip_nats=skip_nats)
    from emitter.config import config_path as _config_path
    from emitter.config import load_config

    s.config_path, explicit = _config_path(config_path)  # the file every component reads
    try:
        s.config = load_config(config_path)
        if s.config:
            checks.append(Check("config", OK, f"{s.config_path} parsed"))
        elif not explicit and not os.path.exists(DEFAULT_CONFIG):
            checks.append(Check("config", WARN, f"no config file at {DEFAULT_CONFIG}; built-in defaults apply",
                                f"copy docs/config.md's example to {DEFAULT_CONFIG} to set hook dirs and NATS"))
        else:
            checks.append(Check("config", OK, f"{s.config_path} parsed (empty)"))
    except Exception as exc:  # ConfigError or TOML error: say which file and why
        if type(exc).__name__ == "UntrustedError":
            checks.append(Check("config", FAIL, f"{exc.problem}; as root, hookscope-hook ignores it (falls back "
                                                "to the last trusted version or the defaults) and the agent and "
                                                "collector refuse to start; the checks below use the defaults",
                                f"chown root:root {s.config_path} && chmod 0644 {s.config_path}"))
        else:
            checks.append(Check("config", FAIL, f"{s.config_path}: {exc}",
                                "fix the file (TOML syntax, known keys only), then run 'hookscope doctor' again"))
    s.slurm_conf = slurm_conf
    runner = _runner_settings(s.config, checks)
    agent = _agent_settings(s.config, checks, journal=journal, nats=nats, creds=creds)
    s.journal_dir = str(agent["journal"])
    if not journal:
        from emitter.config import journal_dir

        checks += _spool_agreement(s.journal_dir, journal_dir(s.config, reader="runner")[0])
    s.nats_urls = split_urls(agent["nats"] or DEFAULT_NATS)
    for k in natsauth.FIELDS:  # the login the agent would use (Setup.auth)
        setattr(s, k, agent[k])
    s.node = str(agent["node"] or os.uname().nodename.split(".")[0])
    s.layout, s.strict = runner["layout"], runner["strict"]
    s.timeout_s = float(runner["timeout_s"]) or None
    # The runner ends a script as slurmd does: SIGTERM, then SIGKILL 10 ms
    # later (kill_grace_s is deprecated and ignored), so plan and doctor ask
    # slurm.conf for the same timeout.
    from emitter.process import KILL_AFTER_S

    s.kill_grace_s = KILL_AFTER_S
    dirs = dict(runner["dirs"])
    if not dirs and not hook_dirs:  # the runner's defaults, where they exist on this node
        dirs = {ctx: d for ctx, d in _default_dirs().items() if os.path.isdir(d)}
    for ctx, d in dirs.items():
        s.hook_dirs[ctx] = [d] if isinstance(d, str) else [str(x) for x in d]
    if hook_dirs:
        s.hook_dirs["--hook-dir"] = list(hook_dirs)
    return s, checks


def _runner_settings(cfg: dict, checks: list[Check]):
    """The runner's own settings object (emitter.config.RunnerSettings), as hookscope-hook resolves it."""
    from emitter.config import RunnerSettings

    try:
        return RunnerSettings.resolve(cfg)
    except Exception as exc:  # ConfigError names the key; the checks go on with the defaults
        checks.append(Check("config", FAIL, f"[runner]: {exc}", "fix the [runner] section (see docs/config.md)"))
        return RunnerSettings.resolve({})


def _agent_settings(cfg: dict, checks: list[Check], **args) -> dict:
    """The agent's values, from the agent's own resolver (emitter.agentsettings).

    A setting the agent would refuse is a FAIL naming the key; the checks then
    go on with the same precedence, unvalidated (AgentSettings.gather).  The
    credential files themselves are checked in detail by check_credentials.
    """
    from emitter.agentsettings import AgentSettings

    try:
        st = AgentSettings.resolve(cfg, check_files=False, **args)
        return {k: getattr(st, k) for k in AgentSettings.keys()}
    except Exception as exc:  # AgentConfigError names the key and the fix
        checks.append(Check("config", FAIL, f"[agent]: {exc}", "fix the [agent] section (see docs/agent.md)"))
        vals = AgentSettings.gather(cfg, **args)
        if isinstance(vals.get("nats"), list):
            vals["nats"] = ",".join(map(str, vals["nats"]))
        return {k: (v if v is None or isinstance(v, str) else str(v)) for k, v in vals.items()}


def _spool_agreement(agent_dir: str, runner_dir: str) -> list[Check]:
    """The agent ships one spool; the runner must write to that one."""
    if os.path.abspath(agent_dir) == os.path.abspath(runner_dir):
        return []
    return [Check("journal", WARN, f"the runner writes {runner_dir} but the agent ships {agent_dir} ([agent] "
                                   f"journal or HOOKSCOPE_JOURNAL applies to the agent alone): hook records in "
                                   f"{runner_dir} are never shipped",
                  "remove [agent] journal (the agent then follows [runner] journal_dir), or make the two equal")]


def _default_dirs() -> dict:
    try:
        from emitter.config import DEFAULT_DIRS
    except ImportError:
        return {}
    return dict(DEFAULT_DIRS)


# ------------------------------------------------------------------ slurm.conf
def parse_slurm_conf(path: str) -> dict[str, str]:
    """Key=value lines, keys lowercased, the last line of a key winning; follows ``Include``."""
    from emitter import slurmconf

    return {k: v[-1] for k, v in slurmconf.read(path).items()}


def _slurm_conf_path(s: Setup):
    if s.slurm_conf is not None:
        return s.slurm_conf
    for cand in (os.environ.get("SLURM_CONF"), DEFAULT_SLURM_CONF, *CONFIGLESS_CACHES):
        if cand and os.path.exists(cand):
            return cand
    return None


def check_slurm_conf(s: Setup) -> list[Check]:
    from emitter import slurmconf

    path = _slurm_conf_path(s)
    if path is None or not os.path.exists(path):
        return [Check("slurm.conf", WARN, f"no slurm.conf at {path or DEFAULT_SLURM_CONF} (configless node "
                                          "without a cached copy, or not a Slurm node)",
                      "pass --slurm-conf PATH, or check the controller's slurm.conf")]
    try:
        conf = slurmconf.read(path)
    except OSError as exc:
        return [Check("slurm.conf", FAIL, f"{path}: {exc}", f"make {path} readable")]
    out, wired = [], []
    for key in HOOK_KEYS:
        for val in slurmconf.hook_values(conf, key):  # 24.05+: several lines of one key all run
            if os.path.basename(val).startswith(HOOK_BINARY):
                if os.path.isfile(val) and os.access(val, os.X_OK):
                    wired.append(key)
                else:
                    out.append(Check("slurm.conf", FAIL, f"{key}={val}: no executable there; every {key} would "
                                                         "fail (and drain the node)",
                                     f"install hookscope so {val} exists, or point {key} at the installed "
                                     f"{HOOK_BINARY} (which {HOOK_BINARY})"))
            else:
                out.append(Check("slurm.conf", WARN, f"{key}={val} bypasses hookscope (not observed)",
                                 f"{key}=/opt/hookscope/bin/{HOOK_BINARY} and list the old scripts' dir in "
                                 "[runner.dirs]; see deploy/slurm/hookscope.conf.snippet"))
    if not wired and not any(c.status == FAIL for c in out):
        out.append(Check("slurm.conf", FAIL, f"{path}: no Prolog/Epilog/... line points to {HOOK_BINARY}",
                         "add the lines from deploy/slurm/hookscope.conf.snippet and 'scontrol reconfigure'"))
    if wired:
        out.insert(0, Check("slurm.conf", OK, f"{path}: {', '.join(dict.fromkeys(wired))} -> {HOOK_BINARY}"))
    out += _timeout_checks(s, conf, wired)
    if "runinjob" in slurmconf.prolog_flags(conf):
        out.append(Check("slurm.conf", OK, "PrologFlags=RunInJob: the prolog (hookscope-hook, its scripts and "
                                           "its journal write) runs inside the job's cgroup and counts against "
                                           "the job's memory and CPU limits"))
    return out


def _timeout_checks(s: Setup, conf: dict, wired: list) -> list[Check]:
    """slurmd's one timer covers the whole wrapper: it must fit N scripts' budgets."""
    from emitter import layouts, slurmconf

    out = []
    for ctx, key in slurmconf.CONTEXT_KEY.items():
        if key not in wired:
            continue
        dirs = s.hook_dirs.get(ctx) or (s.hook_dirs.get("--hook-dir") if ctx == "prolog_slurmd" else None) or []
        try:
            knobs = layouts.knobs_for(s.layout if s.layout in layouts.PRESETS else "slurm")
        except layouts.LayoutError:
            knobs = layouts.knobs_for("slurm")
        n = len(layouts.counted(layouts.plan(dirs, knobs)[0])) if dirs else 0
        v = slurmconf.timeout_verdict(conf, ctx, n, s.timeout_s or 0, s.kill_grace_s)
        if v is not None:
            status, msg, fix = v
            out.append(Check("slurm.conf", status, msg, fix))
    return out


# ------------------------------------------------------------------ driver
from emitter.doctor_spools import check_user_spools  # noqa: E402 - after the names it reuses

CHECKS = (check_hook_dirs, check_journal, check_user_spools, check_credentials, check_nats, check_gpu,
          check_slurm_conf)


def run_checks(s: Setup, pre: list[Check] | None = None) -> list[Check]:
    results = list(pre or [])
    for fn in CHECKS:
        try:
            results += fn(s)
        except Exception as exc:  # a doctor that crashes tells nobody anything
            results.append(Check(fn.__name__.removeprefix("check_"), FAIL, f"check crashed: {exc!r}",
                                 "report this as a hookscope bug"))
    return results


def summary(results: list[Check]) -> dict:
    return {k: sum(1 for r in results if r.status == k) for k in (OK, WARN, FAIL)}


def _make_command():
    import click

    @click.command("doctor", help="""Check this node's hookscope set-up and say how to fix it.

    Checks the config file, hook directories and their permissions, the
    journal directory, NATS reachability and login (with a deadline),
    credential and TLS files, GPU backends, and the slurm.conf lines that
    should point to hookscope-hook.  Exit status 1 if any check FAILs.

    Example:

        hookscope doctor --slurm-conf /etc/slurm/slurm.conf --nats nats://collector:4222
    """)
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="HOOKSCOPE_CONFIG",
                  show_envvar=True, help="hookscope.toml (default /etc/hookscope/hookscope.toml)")
    @click.option("--slurm-conf", type=click.Path(dir_okay=False), help="slurm.conf to inspect (default /etc/slurm/slurm.conf or the configless cache)")
    @click.option("--journal", type=click.Path(file_okay=False), envvar=["HOOKSCOPE_JOURNAL_DIR", "HOOKSCOPE_JOURNAL"],
                  show_envvar=True, help="journal directory (default: as the agent resolves it, [agent] journal then "
                                           "[runner] journal_dir; HOOKSCOPE_JOURNAL is deprecated)")
    @click.option("--nats", envvar="HOOKSCOPE_NATS_URL", show_envvar=True,
                  help="NATS URL(s), comma separated (default from config)")
    @click.option("--creds", type=click.Path(dir_okay=False), envvar="HOOKSCOPE_NATS_CREDS", show_envvar=True,
                  help="NATS creds file")
    @click.option("--hook-dir", multiple=True, type=click.Path(), help="extra hook directory to check (repeatable)")
    @click.option("--deadline", default=2.0, show_default=True, type=float, help="seconds per network/driver call")
    @click.option("--no-nats", is_flag=True, help="skip the NATS checks")
    @click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
    def doctor(config_path, slurm_conf, journal, nats, creds, hook_dir, deadline, no_nats, as_json):
        s, pre = resolve(config_path, slurm_conf, journal, nats, creds, hook_dir, deadline, no_nats)
        results = run_checks(s, pre)
        counts = summary(results)
        if as_json:
            import json

            click.echo(json.dumps({"checks": [asdict(r) for r in results], "summary": counts}, indent=2))
        else:
            from emitter.safetext import visible

            for r in results:
                # Hook file names are chosen by customers: data, never control.
                click.echo(visible(r.line(), keep_layout=True))
            click.echo(f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
        raise SystemExit(1 if counts[FAIL] else 0)

    return doctor


doctor = _make_command()
