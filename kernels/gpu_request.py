"""The ``%gpus`` line magic's argument: how many GPUs a kernel's following cells ask for.

The replica owns ``%gpus`` (:mod:`.replica` registers the magic and answers the front's question about a cell with
:func:`answer_gpus_request`); nothing else parses it. Kept apart from the binding code so that parsing it never
imports torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .protocol import GPUS_MAGIC, GPUS_REPLY

if TYPE_CHECKING:
    from jupyter_client.session import Session

    from .front_control import FrontRequest

_GPUS_ARG = re.compile(r"[0-9]+")
_SIGNED_INT = re.compile(r"[+-][0-9]+")


def parse_gpus_magic(line: str) -> int | None:
    """Parse the argument of the `%gpus` line magic: `%gpus N` asks for N GPUs from the next cell on (0: cells run
    without a GPU), bare `%gpus` (None) shows the current request. Accepts the whole line ("%gpus 2") or, as IPython
    passes it to a line magic, the argument alone ("2", ""). Raises ValueError, with a message for the user, on
    anything else: negative, non-integer or several arguments."""
    text = line.strip()
    if text.startswith(GPUS_MAGIC):
        rest = text[len(GPUS_MAGIC) :]
        if rest and not rest[0].isspace():
            raise ValueError(f"not a %gpus line: {line!r}")
        text = rest.strip()
    if not text:
        return None
    args = text.split()
    if len(args) > 1:
        raise ValueError(f"%gpus takes one number of GPUs, got {text!r}; e.g. %gpus 1, or %gpus 0 for no GPU")
    (arg,) = args
    if _GPUS_ARG.fullmatch(arg):
        return int(arg)
    if _SIGNED_INT.fullmatch(arg) and int(arg) < 0:
        raise ValueError(f"%gpus cannot be negative, got {arg}; use %gpus 0 to run cells without a GPU")
    raise ValueError(f"%gpus takes a whole number of GPUs (0 or more), got {arg!r}")


def cell_gpus(code: str, kernel_gpus: int) -> tuple[int, int]:
    """What a cell asks the scheduler for before it runs, and the kernel's request from then on, given the
    kernel's request before it: a cell that starts with ``%gpus N`` asks for N itself (and so do later cells); a
    cell of nothing but ``%gpus`` lines asks for none, so that ``%gpus 0`` works even when GPUs are scarce; a
    malformed first ``%gpus`` line asks for none and changes nothing (the magic then tells the user why)."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    if not lines or not lines[0].startswith(GPUS_MAGIC):
        return kernel_gpus, kernel_gpus
    try:
        wanted = parse_gpus_magic(lines[0])
    except ValueError:
        return 0, kernel_gpus
    if wanted is not None:
        kernel_gpus = wanted
    return (0 if all(line.startswith(GPUS_MAGIC) for line in lines) else kernel_gpus), kernel_gpus


def answer_gpus_request(session: Session, stream: Any, request: FrontRequest) -> None:
    """Answer the front's ``%gpus`` question (protocol.GPUS_REQUEST): what the cell asks for and the kernel's
    request after it (:func:`cell_gpus` of the request's ``code`` and ``gpus``). Answered on the control thread ahead
    of ipykernel's control dispatch, whose busy and idle on IOPub would cost every cell more than the answer. A
    request that does not parse gets no answer: the front then keeps the kernel's request."""
    try:
        cell, kernel = cell_gpus(str(request.content.get("code", "")), int(request.content.get("gpus", 0)))
    except (ValueError, TypeError):
        return
    session.send(stream, GPUS_REPLY, {"cell": cell, "kernel": kernel}, request.msg, request.idents)
