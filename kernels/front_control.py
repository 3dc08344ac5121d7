"""The front's own requests on a replica's control channel (protocol.GPUS_REQUEST, ATTEMPT_ABANDONED and QUICKEN, and
a monitor's ANNOUNCE_APPLIED),
picked out of the control stream ahead of ipykernel's dispatch, which would answer them with an error and publish
busy and idle on IOPub for each.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from .protocol import ANNOUNCE_APPLIED, ATTEMPT_ABANDONED, GPUS_REQUEST, QUICKEN

if TYPE_CHECKING:
    from jupyter_client.session import Session

FRONT_REQUESTS = frozenset({GPUS_REQUEST, ATTEMPT_ABANDONED, QUICKEN, ANNOUNCE_APPLIED})


class FrontRequest(NamedTuple):
    idents: list
    msg: dict[str, Any]  # checked against the session's key: only the front signs with it

    @property
    def msg_type(self) -> str:
        return str(self.msg["header"]["msg_type"])

    @property
    def content(self) -> dict[str, Any]:
        return self.msg["content"]


def front_request(session: Session, raw: list) -> FrontRequest | None:
    """``raw``, a control message as the replica's control stream received it, if it is one of the front's own
    requests with a valid signature; None for anything else (ipykernel then handles it, and reports what does not
    parse)."""
    try:
        idents, frames = session.feed_identities(raw, copy=False)
        header = json.loads(frames[1].bytes if hasattr(frames[1], "bytes") else frames[1])
        if header.get("msg_type") not in FRONT_REQUESTS:
            return None
        msg = session.deserialize(frames, content=True, copy=False)  # checks the signature
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(msg.get("content"), dict):
        return None
    return FrontRequest(idents, msg)
