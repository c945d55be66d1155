"""TLS: a session verifies an https server with the CA it is given, and the context built for
a setting is shared by the sessions after it until the CA file changes.

A local https server (the standard library's, with certificates made here): a Prefect server
does not serve TLS itself (a proxy in front of it does), and only the handshake is tested."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flowsync.api.session import ApiSession, RetryPolicy, tls_context
from flowsync.config import ApiSettings
from flowsync.errors import ApiError


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common)])


def certificates(folder: Path, label: str) -> tuple[Path, Path, Path]:
    """A CA (``label``) and a certificate it signs for 127.0.0.1: the CA's PEM file, the
    server's certificate and its key."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def signed(subject: x509.Name, public: object, *extensions: tuple[object, bool]) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(_name(f"flowsync test CA {label}"))
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)  # type: ignore[arg-type]
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca = folder / f"ca-{label}.pem"
    ca.write_bytes(
        signed(
            _name(f"flowsync test CA {label}"),
            ca_key.public_key(),
            (x509.BasicConstraints(ca=True, path_length=None), True),
        )
    )
    cert, private = folder / f"server-{label}.pem", folder / f"server-{label}.key"
    cert.write_bytes(
        signed(
            _name("127.0.0.1"),
            key.public_key(),
            (
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                False,
            ),
        )
    )
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca, cert, private


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def https_server(cert: Path, key: Path) -> Iterator[str]:
    """An https server on 127.0.0.1 answering every GET with ``true``; yields its API URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def health(url: str, verify: bool | str) -> object:
    session = ApiSession(ApiSettings(url=url, verify=verify), retry=RetryPolicy(attempts=1))
    try:
        return session.request("GET", "health")
    finally:
        session.close()


def test_a_session_verifies_the_server_with_the_ca_file_it_is_given(tmp_path: Path) -> None:
    ca, cert, key = certificates(tmp_path, "one")
    with https_server(cert, key) as url:
        assert health(url, str(ca)) is True
        with pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
            health(url, True)  # certifi's bundle does not hold this CA
        assert health(url, False) is True  # PREFECT_API_TLS_INSECURE_SKIP_VERIFY


def test_a_ca_file_changed_in_place_is_the_one_the_next_session_verifies_with(
    tmp_path: Path,
) -> None:
    """A long-running process (a notebook, a scheduler) whose CA file is renewed in place:
    the next session loads the new one, not the context built from the old."""
    ca, cert, key = certificates(tmp_path, "old")
    new_ca, new_cert, new_key = certificates(tmp_path, "new")
    with https_server(cert, key) as url:
        assert health(url, str(ca)) is True
    ca.write_bytes(new_ca.read_bytes() + b"\n")  # renewed in place: same path
    with https_server(new_cert, new_key) as url:
        assert health(url, str(ca)) is True
    with https_server(cert, key) as url, pytest.raises(ApiError, match="CERTIFICATE_VERIFY_FAILED"):
        health(url, str(ca))  # the old CA is no longer trusted


def test_sessions_share_one_context_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, _, _ = certificates(tmp_path, "one")
    assert tls_context(True) is tls_context(True)
    assert tls_context(str(ca)) is tls_context(str(ca))
    assert tls_context(False) is not tls_context(True)
    assert tls_context(False).verify_mode == ssl.CERT_NONE
    assert tls_context(True).verify_mode == ssl.CERT_REQUIRED
    default = tls_context(True)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # as httpx reads it: a context of its own
    assert tls_context(True) is not default
    assert tls_context(True).get_ca_certs()[0]["subject"] == (
        (("commonName", "flowsync test CA one"),),
    )


def test_a_certificate_not_trusted_is_one_error_at_once_with_the_setting_to_change(
    tmp_path: Path,
) -> None:
    """A server whose certificate the CA bundle does not hold: retrying changes nothing, and
    the line said to check that the server is up, with OpenSSL's reason cut short. It is
    not retried; the line gives the whole reason and the settings that fix it."""
    _ca, cert, key = certificates(tmp_path, "self")
    sleeps: list[float] = []
    with https_server(cert, key) as url:
        session = ApiSession(
            ApiSettings(url=url, verify=True), retry=RetryPolicy(attempts=5), sleep=sleeps.append
        )
        try:
            with pytest.raises(ApiError) as refused:
                session.request("GET", "health")
        finally:
            session.close()
    message = str(refused.value)
    assert sleeps == [] and session.requests == 1
    assert "certificate verify failed: unable to get local issuer certificate" in message, message
    assert "PREFECT_API_SSL_CERT_FILE" in message and "_ssl.c" not in message
