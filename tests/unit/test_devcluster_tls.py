"""The local control plane's API server TLS (`certs.apiserver_tls`): kubeconfigs carry the
CA that signed the server's certificate, and a client that verifies (hostname included)
completes a handshake with it on 127.0.0.1; one trusting another CA does not."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from pathlib import Path

import pytest
import yaml

from perllm.devcluster import certs
from perllm.devcluster import config as cfg


def _handshake(tls: certs.ApiServerTls, trust: Path) -> str:
    """A TLS server on 127.0.0.1 with the API server's pair; a verifying client that
    trusts `trust`, with strict X.509 checks (Python 3.13's default context and urllib3
    there turn them on). Returns the negotiated version (raises on a failed verification)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client_ctx = ssl.create_default_context(cafile=str(trust))  # verifies, hostname too
        client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
            ):
                return str(s.version())
        finally:
            t.join(timeout=5)


def test_a_verifying_client_trusts_the_api_server_through_the_kubeconfigs_ca(
    tmp_path: Path,
) -> None:
    tls = certs.apiserver_tls(tmp_path / "pki")
    assert tls.key.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(cfg.kubeconfig("https://127.0.0.1:6443", "t0k3n", tls.ca.read_bytes()))
    cluster = doc["clusters"][0]["cluster"]
    assert "insecure-skip-tls-verify" not in cluster
    ca_file = tmp_path / "from-kubeconfig.crt"
    ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    assert _handshake(tls, ca_file).startswith("TLS")


def test_a_client_trusting_another_ca_refuses_the_api_server(tmp_path: Path) -> None:
    tls = certs.apiserver_tls(tmp_path / "pki")
    other = certs.apiserver_tls(tmp_path / "other")  # same names, another CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, other.ca)
