"""The runner's per-node log: one line per script (and per skipped file with a
warning), failing output indented under it, as TensorWave's dispatcher writes
``/var/log/hookscope/hooks-{node}.log`` (``layout = "tensorwave"`` or
``runner.log_file``).  Off the hot path: imported only when a line is due.
"""

import os
import time

DEFAULT_PATH = "/var/log/hookscope/hooks-{node}.log"


def visible(text, keep_layout=False):
    """The log is read with ``tail -f`` on a terminal: names and output are
    data, never terminal control (emitter/safetext.py).  Every character
    safetext escapes is non-printable to str.isprintable, so a printable line
    is returned as is, without importing safetext (it needs re and json)."""
    if text.isprintable():
        return text
    from emitter.safetext import visible as escape

    return escape(text, keep_layout=keep_layout)


def log_path(settings, journal):
    node = journal.node if journal is not None else os.uname().nodename.split(".")[0]
    return (settings["log_file"] or DEFAULT_PATH).replace("{node}", node)


def format_line(context, env, text, output, redact):
    """The log text for one event: ``output`` (bytes) redacted, one indented line each."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = visible(f"{ts} context={context} job={env.get('SLURM_JOB_ID', '-')} "
                   f"user={env.get('SLURM_JOB_USER', '-')} {text}") + "\n"
    if output:
        out = redact(output.decode("utf-8", "replace"))
        line += "".join(f"    | {visible(ln, keep_layout=True)}\n" for ln in out.splitlines())
    return line
