"""The ``%gpus`` line magic's argument: how many GPUs a kernel's following cells ask for.

Kept apart from the binding code so that parsing it never imports torch.
"""
from __future__ import annotations

import re

_GPUS_ARG = re.compile(r"[0-9]+")
_SIGNED_INT = re.compile(r"[+-][0-9]+")


def parse_gpus_magic(line: str) -> int | None:
    """Parse the argument of the `%gpus` line magic: `%gpus N` asks for N GPUs from the next cell on (0: cells run
    without a GPU), bare `%gpus` (None) shows the current request. Accepts the whole line ("%gpus 2") or, as IPython
    passes it to a line magic, the argument alone ("2", ""). Raises ValueError, with a message for the user, on
    anything else: negative, non-integer or several arguments."""
    text = line.strip()
    if text.startswith("%gpus"):
        rest = text[len("%gpus"):]
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
