"""Helpers shared by every test tier.

``wait_for`` is the one way tests wait: on a condition, with a generous
deadline, never a sleep before an assert (a live agent or collector is
compared with what it has done, not with a snapshot taken while it works).

- :mod:`tests.helpers.servers`: real nats-servers, one (``NatsServer``) or a
  JetStream cluster (``NatsCluster``), on ports they pick.
- :mod:`tests.helpers.pipeline`: the stages as real processes (``run_cmd``,
  ``agent_cmd``, ``collect_cmd``), ``publish``/``collect_once`` for the
  collector, and ``Pipeline`` wiring runner, agents, collector and store.

Those two are imported by name (``from tests.helpers.pipeline import
Pipeline``), not from here, so that a unit test importing ``wait_for`` does
not load DuckDB and the collector.
"""

from tests.helpers.wait import wait_for

__all__ = ["wait_for"]
