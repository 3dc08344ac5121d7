"""The cluster's TLS material: certificates made from a CA (ours, or one an operator made with openssl) verify in
a real TLS handshake for the addresses they name and for no other CA; join tokens carry the CA's pin."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from notebookos.gpu_broker.cluster.join_token import pin_ca, read_token
from notebookos.gpu_broker.cluster.tls import ServerTLS, auto_tls, client_context, fingerprint, self_signed


def _handshake(tls: ServerTLS, ca_pem: str, server_name: str = "127.0.0.1") -> str:
    """Serve one TLS connection on 127.0.0.1 with ``tls`` and connect to it trusting ``ca_pem`` alone; the
    certificate's common name the client saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = tls.context()

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as secured:
                secured.recv(1)
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_context(ca_pem).wrap_socket(raw, server_hostname=server_name) as secured,
        ):
            subject = dict(item[0] for item in secured.getpeercert()["subject"])
            secured.sendall(b"x")
            return subject["commonName"]
    finally:
        listener.close()


def test_the_service_certificate_verifies_against_its_ca_only(tmp_path: Path) -> None:
    tls = auto_tls(tmp_path / "ca", tmp_path / "tls", ["127.0.0.1", "cluster.example"])
    assert _handshake(tls, tls.ca_pem) == "notebookos cluster"
    assert oct((tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    # A second start keeps the CA (the pins given out stay valid) and makes a new server certificate.
    again = auto_tls(tmp_path / "ca", tmp_path / "tls", ["127.0.0.1"])
    assert again.ca_pem == tls.ca_pem and fingerprint(again.ca_pem) == fingerprint(tls.ca_pem)
    other = auto_tls(tmp_path / "other-ca", tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, other.ca_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(again, again.ca_pem, server_name="cluster.example")  # not a name of the second certificate


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_ca_an_operator_made_with_openssl_signs_the_service_certificate(tmp_path: Path) -> None:
    """As deploy/kubernetes/cluster.yaml tells operators to make it (a Secret the service reads, never writes)."""
    ca = tmp_path / "ca"
    ca.mkdir()
    subprocess.run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem"],
        cwd=ca,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-days",
            "30",
            "-subj",
            "/CN=notebookos cluster CA",
            "-out",
            "ca.pem",
        ],
        cwd=ca,
        check=True,
        capture_output=True,
    )
    ca.chmod(0o500)
    tls = auto_tls(ca, tmp_path / "tls", ["127.0.0.1"])
    assert tls.ca_pem == (ca / "ca.pem").read_text()
    assert _handshake(tls, tls.ca_pem) == "notebookos cluster"


def test_an_agent_certificate_is_its_own_trust_anchor(tmp_path: Path) -> None:
    tls = self_signed(tmp_path, "127.0.0.1")
    assert _handshake(tls, tls.ca_pem) == "notebookos agent 127.0.0.1"


def test_a_join_token_file_gains_the_ca_pin_and_keeps_its_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "join-token"
    token_file.write_text("a" * 32 + "\n")
    assert read_token(token_file).ca_pin is None
    assert pin_ca(token_file, "sha256:" + "1" * 64).ca_pin == "sha256:" + "1" * 64
    assert read_token(token_file).secret == "a" * 32 and read_token(token_file).ca_pin == "sha256:" + "1" * 64
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
