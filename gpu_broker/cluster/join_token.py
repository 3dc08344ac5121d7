"""The cluster's join token: the shared secret an agent proves it may add its machine to the pool with.

The operator creates it once (``openssl rand -hex 32 > join-token``, or lets ``notebookos cluster`` create it at
first start) and copies it to each GPU machine. Files holding it are created with mode 0600. A service with
``--tls-auto`` adds the fingerprint of its CA to the file (``<secret> sha256:<hex>``): whoever holds the file then
knows which cluster to trust, not only how to prove itself to it (tls.py).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from jupyter_core.paths import secure_write

MIN_LENGTH = 16
log = logging.getLogger(__name__)


class TokenError(RuntimeError):
    """The token file is missing, unreadable or too short; the message says which file and what to do."""


@dataclass(frozen=True)
class JoinToken:
    secret: str
    ca_pin: str | None = None  # sha256:<hex> of the cluster's CA certificate, when the service made one


def read_token(path: Path) -> JoinToken:
    try:
        words = Path(path).read_text().split()
    except FileNotFoundError:
        raise TokenError(f"join token file {path} does not exist; copy the cluster's join token there") from None
    except OSError as err:
        raise TokenError(f"cannot read join token file {path}: {err.strerror}") from None
    secret = words[0] if words else ""
    if len(secret) < MIN_LENGTH:
        raise TokenError(
            f"join token file {path} holds {len(secret)} characters; a join token has at least "
            f"{MIN_LENGTH} (make one with: openssl rand -hex 32 > {path})"
        )
    pins = [w for w in words[1:] if w.startswith("sha256:")]
    return JoinToken(secret, pins[0] if pins else None)


def ensure_token(path: Path) -> JoinToken:
    """The token in ``path``, created (mode 0600) with a new random token when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with secure_write(str(path)) as f:
            f.write(secrets.token_hex(32) + "\n")
    return read_token(path)


def pin_ca(path: Path, pin: str) -> JoinToken:
    """Record the cluster CA's fingerprint in the token file (the secret stays the same). A file this process
    cannot write (a read-only Secret) is left as it is: its holders are then given the CA itself instead."""
    token = read_token(path)
    if token.ca_pin != pin:
        try:
            with secure_write(str(path)) as f:
                f.write(f"{token.secret} {pin}\n")
        except OSError as err:
            log.warning(
                "could not add the CA's fingerprint to %s (%s): give agents the CA with --cluster-ca",
                path,
                err.strerror,
            )
    return JoinToken(token.secret, pin)
