"""What the cluster service's API and the agents' API share: a token in the Authorization header, JSON bodies in,
errors out as ``{"error": message}``."""

from __future__ import annotations

import json
import secrets
from typing import Any

import tornado.web
from tornado.log import access_log


class JsonHandler(tornado.web.RequestHandler):
    def presents(self, token: str) -> bool:
        """Whether the request carries ``Authorization: token <token>`` (Jupyter's form) or ``Bearer <token>``
        (Prometheus' and most HTTP clients'), compared in constant time."""
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("token", "bearer") and secrets.compare_digest(given.encode(), token.encode())

    def body(self) -> dict[str, Any]:
        """The request's JSON object, or 400 saying what is wrong with it."""
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as err:
            raise tornado.web.HTTPError(400, reason=f"request body is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, reason="request body must be a JSON object")
        return data

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason})


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log of the cluster service and the agents, as Jupyter Server keeps its own: successes at debug
    (200 agents heartbeat every second; a line for each cost the service more CPU than the heartbeat), refusals at
    warning, failures at error."""
    status = handler.get_status()
    if status < 400:
        log = access_log.debug
    elif status < 500:
        log = access_log.warning
    else:
        log = access_log.error
    request = handler.request
    log("%d %s %s (%s) %.2fms", status, request.method, request.path, request.remote_ip, 1000 * request.request_time())
