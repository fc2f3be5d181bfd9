"""Text from scripts is data, never control: see :mod:`emitter.safetext`.

The module lives in ``emitter`` so that every package (emitter <- collector <-
queries <- dashboards) can use the one implementation; this name stays for
the queries and dashboards that import it.
"""

from emitter.safetext import _esc, csv_cell, is_visible, json_text, visible, visible_data  # noqa: F401
