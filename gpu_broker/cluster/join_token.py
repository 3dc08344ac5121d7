"""The cluster's join token: the shared secret an agent proves it may add its machine to the pool with.

The operator creates it once (``openssl rand -hex 32 > join-token``, or lets ``notebookos cluster`` create it at
first start) and copies it to each GPU machine. Files holding it are created with mode 0600.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from jupyter_core.paths import secure_write

MIN_LENGTH = 16


class TokenError(RuntimeError):
    """The token file is missing, unreadable or too short; the message says which file and what to do."""


def read_token(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"join token file {path} does not exist; copy the cluster's join token there") from None
    except OSError as err:
        raise TokenError(f"cannot read join token file {path}: {err.strerror}") from None
    if len(token) < MIN_LENGTH:
        raise TokenError(f"join token file {path} holds {len(token)} characters; a join token has at least "
                         f"{MIN_LENGTH} (make one with: openssl rand -hex 32 > {path})")
    return token


def ensure_token(path: Path) -> str:
    """The token in ``path``, created (mode 0600) with a new random token when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with secure_write(str(path)) as f:
            f.write(secrets.token_hex(32) + "\n")
    return read_token(path)
