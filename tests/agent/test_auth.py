"""A node with the least privileges of docs/security.md (publish its own
subjects, read only its own inbox) can ship, from the agent and direct mode."""

import asyncio
import subprocess

from tests.agent.agentkit import job_env, journal_files, stream_messages, write_hooks_fast
from tests.helpers.pipeline import agent_cmd
from tests.helpers.servers import NatsServer
from tests.helpers import wait_for

from emitter import contract as c
from emitter import direct, natsio

AUTH = """
authorization {
  users = [
    {user: admin, password: adminpw}
    {user: n1, password: n1pw, permissions: {
      publish: {allow: ["hookscope.spans.c1.n1", "hookscope.metrics.c1.n1", "$JS.API.INFO",
                        "$JS.API.STREAM.INFO.HOOKSCOPE"]}
      subscribe: {allow: ["_INBOX_n1.>"]}
    }}
  ]
}
"""


def test_least_privilege_node_ships_with_its_own_inbox(tmp_path):
    srv = NatsServer(store_dir=tmp_path / "nats", config=AUTH)
    try:
        srv.start()

        async def streams():
            nc = await natsio.connect(natsio.NatsOptions(servers=srv.url, user="admin", password="adminpw"))
            await natsio.ensure_streams(nc.jetstream())
            await nc.close()

        asyncio.run(streams())
        j = tmp_path / "journal"
        write_hooks_fast(j, 3, node="n1", cluster="c1")
        env = job_env(0, HOOKSCOPE_NATS_PASSWORD="n1pw")
        r = subprocess.run(agent_cmd(srv.url, j, "--once", "--user", "n1", "--node", "n1"), env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert journal_files(j) == []
        write_hooks_fast(j, 1, node="n1", cluster="c1", job_base=9000)
        (name,) = journal_files(j)
        direct.ship(j, j / name, 2.0, {"agent": {"nats": srv.url, "user": "n1", "password": "n1pw"}},
                    detach=False)
        assert journal_files(j) == []
        admin = srv.url.replace("nats://", "nats://admin:adminpw@")
        msgs = wait_for(lambda: stream_messages(admin), what="messages")
        assert len(msgs) == 4 and {m.subject for m in msgs} == {c.subject("spans", "c1", "n1")}
    finally:
        srv.cleanup()
