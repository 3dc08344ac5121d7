"""TLS for the cluster service and the agents: a cluster CA made at first start, pinned by the join token.

``notebookos cluster --tls-auto`` makes a CA under its state folder (kept across restarts) and, at each start, a
server certificate signed by it for the addresses it serves on. The join token then pins the CA, as ``kubeadm join``
pins its cluster CA: the token file holds the secret and ``sha256:<hex>`` of the CA certificate (DER). An agent or a
Jupyter server given that file fetches the CA from ``GET /tls/ca.pem`` (unauthenticated: a CA is public), accepts it
only if its hash is the pinned one, and from then on verifies the service against it alone. With
``--certfile/--keyfile`` the operator's certificate is used and clients verify it against the system's CAs.

An agent serves its own API with a self-signed certificate for its address, made at each start, and hands that
certificate to the cluster in its join (over the verified TLS connection, with the join token); the cluster then
trusts exactly that certificate when it calls the agent.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jupyter_core.paths import secure_write

CA_PATH = "/tls/ca.pem"  # where the service serves its CA when it made one
_VALID = datetime.timedelta(days=3650)


class TLSError(RuntimeError):
    """A certificate could not be made, loaded or trusted; the message says which and what to do."""


@dataclass(frozen=True)
class ServerTLS:
    """What a service presents: its certificate and key files, and the CA that signed it when it made one."""

    certfile: Path
    keyfile: Path
    ca_pem: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.certfile), str(self.keyfile))
        except (OSError, ssl.SSLError) as err:
            raise TLSError(f"cannot load the certificate {self.certfile} with key {self.keyfile}: {err}") from None
        return context


def fingerprint(pem: str) -> str:
    """``sha256:<hex>`` of a certificate's DER form: what a join token pins."""
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def client_context(ca_pem: str | None) -> ssl.SSLContext:
    """A client context trusting ``ca_pem`` alone, or the system's CAs when None."""
    context = ssl.create_default_context()
    if ca_pem is not None:
        context = ssl.create_default_context(cadata=ca_pem)
    return context


def auto_tls(ca_folder: Path, folder: Path, addresses: list[str]) -> ServerTLS:
    """The service's certificate for ``addresses`` (IPs or DNS names), written to ``folder`` and signed by the CA
    in ``ca_folder`` (``ca.pem``, ``ca-key.pem``), which is made there the first time (keys mode 0600). A CA kept
    elsewhere (a Kubernetes Secret) is used as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = ca_folder / "ca.pem", ca_folder / "ca-key.pem"
    if not ca_cert.exists():
        ca_folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notebookos cluster CA")])
        cert = _certificate(name, name, key.public_key(), key, [], ca=True)
        _write_key(ca_key, key)
        ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    authority_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(authority_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):  # what signs with SHA-256
        raise TLSError(f"the cluster CA's key {ca_key} is a {type(authority_key).__name__}: it must be EC or RSA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notebookos cluster")])
    cert = _certificate(subject, authority.subject, key.public_key(), authority_key, addresses, ca=False)
    _write_key(folder / "server-key.pem", key)
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ServerTLS(folder / "server.pem", folder / "server-key.pem", ca_cert.read_text())


def self_signed(folder: Path, address: str) -> ServerTLS:
    """A new self-signed certificate for ``address`` (an agent's API): its own trust anchor."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"notebookos agent {address}")])
    cert = _certificate(name, name, key.public_key(), key, [address], ca=True)
    _write_key(folder / "agent-key.pem", key)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (folder / "agent.pem").write_text(pem)
    return ServerTLS(folder / "agent.pem", folder / "agent-key.pem", pem)


def serving_names(listen_address: str) -> list[str]:
    """The names a service listening on ``listen_address`` is reached by: that address (or, on every interface,
    this machine's addresses), loopback, and the machine's name."""
    hostname = socket.gethostname()
    names = {"127.0.0.1", "localhost", hostname}
    if listen_address in ("0.0.0.0", ""):
        try:
            # AF_INET: each address is a string (typeshed's sockaddr allows the ints of other families).
            names |= {str(info[4][0]) for info in socket.getaddrinfo(hostname, None, socket.AF_INET)}
        except OSError:
            pass
    else:
        names.add(listen_address)
    return sorted(names)


def fetch_pinned_ca(url: str, pin: str, timeout: float = 10.0) -> str:
    """The CA the service at ``url`` serves, if its fingerprint is ``pin``; TLSError otherwise. The download is not
    verified (nothing is trusted yet): the pin is what makes it trustworthy."""
    import urllib.request

    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url.rstrip("/") + CA_PATH, timeout=timeout, context=insecure) as resp:
            pem = resp.read().decode()
    except OSError as err:
        raise TLSError(f"cannot fetch the cluster's CA from {url}: {err}") from None
    try:
        found = fingerprint(pem)
    except ValueError:
        raise TLSError(f"{url}{CA_PATH} is not a certificate") from None
    if found != pin:
        raise TLSError(
            f"the cluster at {url} presents a CA with fingerprint {found}, not the {pin} the join token "
            "pins: this is not the cluster the token was made for (or someone is in between)"
        )
    return pem


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    names: list[str],
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    with secure_write(str(path), binary=True) as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
