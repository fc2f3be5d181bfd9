"""One component's table of the hookscope config file, checked (not on the hook's path).

The collector (``[collector]``) and the dashboard (``[dashboard]``) read
their sections the same way: the ``config`` argument, else
``$HOOKSCOPE_CONFIG``, else the default file when present; unknown keys and
values their converter refuses are errors naming the file and the key.
"""

import os

from emitter import EmitterError
from emitter.config import DEFAULT_PATH, ENV_CONFIG, load_config


def load_section(section: str, converters: dict, config=None, env=None) -> tuple[str, dict]:
    """(config file path, ``[section]`` converted by ``converters[key]``).

    Raises :class:`EmitterError` (load_config's ConfigError, or a bad table, key or value)."""
    env = os.environ if env is None else env
    given = config or env.get(ENV_CONFIG)
    path = str(given) if given else DEFAULT_PATH
    cfg = load_config(path) if given or os.path.exists(path) else {}  # the default file: if present
    sec = cfg.get(section) or {}
    if not isinstance(sec, dict):
        raise EmitterError(f"hookscope config {path}: [{section}] must be a table")
    unknown = set(sec) - set(converters)
    if unknown:
        raise EmitterError(f"hookscope config {path}: unknown key(s) in [{section}]: "
                          f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(converters))})")
    out = {}
    for key, v in sec.items():
        try:
            out[key] = converters[key](v)
        except ValueError as exc:
            raise EmitterError(f"hookscope config {path}: [{section}] {key} = {v!r}: {exc}") from None
    return path, out
