"""The agent's HTTP API, which only the cluster service calls (with the token the agent sent when it joined).

| method and path | what |
|---|---|
| `GET /replicas` | every replica this agent runs: kernel, index, pid, alive, ready, exit code |
| `POST /kernels/{id}/ports` | `{"count": N}`: N free ports on this machine's address for the kernel's replica |
| `POST /replicas` | `{"config": ReplicaConfig, "connection": {...}}`: start a replica; answers its report |
| `POST /replicas/{id}/{n}/kill` | SIGKILL the replica (fault drill) |
| `DELETE /kernels/{id}` | stop the kernel's replicas here, free their ports, delete their folder |

The agent lends the service a range of its ports when it joins, and the service chooses a replica's ports from it;
``POST /replicas`` answers 409 when one of them is in use here. ``POST /kernels/{id}/ports`` is for a service that
does not choose ports itself (an earlier version).

Every call runs on the agent's one worker thread, so two never interleave on the host agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tornado.web

from ....kernels.replica_config import ReplicaConfig
from ..json_api import JsonHandler
from .remote import config_json
from ..ports import PortsExhausted, PortsTaken

if TYPE_CHECKING:
    from .daemon import Agent

MAX_PORTS = 16


class AgentHandler(JsonHandler):
    """Token authentication, JSON in and out, errors as JSON ``{"error": message}``."""

    def initialize(self, agent: Agent) -> None:
        self.agent = agent

    def prepare(self) -> None:
        if not self.presents(self.agent.api_token):
            raise tornado.web.HTTPError(401, reason="missing or wrong agent token")

    async def run(self, fn: Any, *args: Any) -> Any:
        try:
            return await self.agent.run(fn, *args)
        except KeyError as err:
            raise tornado.web.HTTPError(404, reason=f"no replica {err.args[0]} on this host") from None
        except PortsExhausted as err:
            raise tornado.web.HTTPError(503, reason=str(err)) from None
        except PortsTaken as err:
            raise tornado.web.HTTPError(409, reason=str(err)) from None
        except OSError as err:
            raise tornado.web.HTTPError(507, reason=f"the agent could not start the replica: {err}") from None


class AgentReplicasHandler(AgentHandler):
    def get(self) -> None:
        self.finish({"replicas": self.agent.report()})

    async def post(self) -> None:
        body = self.body()
        described = body.get("config")
        if not isinstance(described, dict):
            raise tornado.web.HTTPError(400, reason="config is not a replica configuration: not a JSON object")
        try:
            config = ReplicaConfig.from_json(described)
        except (TypeError, ValueError, KeyError) as err:
            raise tornado.web.HTTPError(400, reason=f"config is not a replica configuration: {err}") from None
        connection = body.get("connection")
        if not isinstance(connection, dict):
            raise tornado.web.HTTPError(400, reason="connection must be a JSON object (the replica's channels)")
        proc = await self.run(self.agent.host.start_replica, config, connection)
        self.finish({**proc.describe(), "config": config_json(proc.config)})


class AgentPortsHandler(AgentHandler):
    async def post(self, kernel_id: str) -> None:
        count = self.body().get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_PORTS:
            raise tornado.web.HTTPError(400, reason=f"count must be a whole number from 1 to {MAX_PORTS}")
        self.finish({"ports": await self.run(self.agent.host.take_ports, kernel_id, count)})


class AgentKillHandler(AgentHandler):
    async def post(self, kernel_id: str, replica: str) -> None:
        await self.run(self.agent.host.kill_replica, kernel_id, int(replica))
        self.finish(self.agent.host.replicas[(kernel_id, int(replica))].describe())


class AgentKernelHandler(AgentHandler):
    async def delete(self, kernel_id: str) -> None:
        await self.run(self.agent.host.stop_kernel, kernel_id)
        self.set_status(204)
        self.finish()


def routes(agent: Agent) -> list[tuple[str, type, dict]]:
    args = {"agent": agent}
    return [
        (r"/replicas", AgentReplicasHandler, args),
        (r"/replicas/([^/]+)/(\d+)/kill", AgentKillHandler, args),
        (r"/kernels/([^/]+)/ports", AgentPortsHandler, args),
        (r"/kernels/([^/]+)", AgentKernelHandler, args),
    ]
