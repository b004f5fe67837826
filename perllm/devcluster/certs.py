"""TLS material of the local control plane (docs/development.md).

kube-scheduler <-> extender: a CA, the extender's serving certificate and kube-scheduler's
client certificate, all signed by that CA (`generate`). The API server: its serving
certificate signed by a CA of its own (`apiserver_tls`), which every kubeconfig of the
control plane carries, so clients verify the server instead of skipping TLS verification.

The extender serves HTTPS and requires a client certificate signed by the CA
(`perllm extender --tls-cert --tls-key --tls-client-ca`); kube-scheduler's extender entry
(`enableHTTPS`, `tlsConfig`) verifies the server against the same CA and presents the
client certificate. Used by the local control plane, the demo and the e2e tests; the Helm
chart makes the same three with Helm's genCA/genSignedCert (or cert-manager).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "127.0.0.1")
# The API server listens on loopback; the in-cluster names are what a real one also serves.
APISERVER_NAMES = (
    "localhost",
    "127.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
CLIENT_NAME = "perllm-scheduler"  # the CN of kube-scheduler's client certificate


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files: `ca` (certificate only; its key is not kept), the server pair
    (extender) and the client pair (kube-scheduler)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def under(cls, folder: Path) -> TlsFiles:
        return cls(
            folder / "ca.crt",
            folder / "server.crt",
            folder / "server.key",
            folder / "client.crt",
            folder / "client.key",
        )

    def exist(self) -> bool:
        return all(
            p.exists()
            for p in (self.ca, self.server_cert, self.server_key, self.client_cert, self.client_key)
        )

    def extender_args(self) -> list[str]:
        """`perllm extender` flags that serve HTTPS with client authentication."""
        return [
            f"--tls-cert={self.server_cert}",
            f"--tls-key={self.server_key}",
            f"--tls-client-ca={self.ca}",
        ]


@dataclass(frozen=True)
class ApiServerTls:
    """The API server's serving pair (`--tls-cert-file`, `--tls-private-key-file`) and the
    certificate of the CA that signed it (`certificate-authority-data` in kubeconfigs)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, folder: Path) -> ApiServerTls:
        return cls(folder / "apiserver-ca.crt", folder / "apiserver.crt", folder / "apiserver.key")


def apiserver_tls(folder: Path, days: int = 30) -> ApiServerTls:
    """A fresh CA and the API server's serving pair under `folder` (key mode 0600); the
    CA's key is thrown away, as in `generate`."""
    ca, ca_key = _ca("perllm-apiserver-ca", days)
    cert, key = _leaf(
        "kube-apiserver", ExtendedKeyUsageOID.SERVER_AUTH, ca, ca_key, days, APISERVER_NAMES
    )
    files = ApiServerTls.under(folder)
    _write(files.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.key, _pem_key(key), private=True)
    return files


def rsa_key(path: Path) -> None:
    """An RSA key (PEM, mode 0600): the API server's service-account signing key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    _write(path, pem, private=True)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        # Key identifiers: strict X.509 verification (Python 3.13's default context,
        # urllib3 2.x there) refuses a chain without them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _leaf(
    cn: str,
    usage: x509.ObjectIdentifier,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    names: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    b = (
        _builder(cn, ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        b = b.add_extension(_san(names), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ca(cn: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate and its key (the callers keep only the certificate)."""
    key = _key()
    cert = (
        _builder(cn, _name(cn), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def generate(
    folder: Path, server_names: tuple[str, ...] = SERVER_NAMES, days: int = 30
) -> TlsFiles:
    """A fresh CA, server and client pair under `folder` (keys mode 0600). The CA's key is
    thrown away: nothing else can be signed by this CA later."""
    ca, ca_key = _ca("perllm-extender-ca", days)
    server, server_key = _leaf(
        server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, ca, ca_key, days, server_names
    )
    client, client_key = _leaf(CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, ca, ca_key, days)
    files = TlsFiles.under(folder)
    _write(files.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(files.server_cert, server.public_bytes(serialization.Encoding.PEM))
    _write(files.server_key, _pem_key(server_key), private=True)
    _write(files.client_cert, client.public_bytes(serialization.Encoding.PEM))
    _write(files.client_key, _pem_key(client_key), private=True)
    return files


def self_signed_client(folder: Path, cn: str = "intruder", days: int = 1) -> tuple[Path, Path]:
    """A client pair signed by a CA of its own (not the extender's): what an attacker can
    make. Returns (cert, key)."""
    ca_key = _key()
    ca = (
        _builder(cn + "-ca", _name(cn + "-ca"), ca_key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert, key = _leaf(cn, ExtendedKeyUsageOID.CLIENT_AUTH, ca, ca_key, days)
    c, k = folder / f"{cn}.crt", folder / f"{cn}.key"
    _write(c, cert.public_bytes(serialization.Encoding.PEM))
    _write(k, _pem_key(key), private=True)
    return c, k
