"""A TLS Mosquitto for tests: a throwaway CA, a server certificate for 127.0.0.1, and a
broker with a TLS listener (and a plain one beside it for test clients)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.testing.mosquitto import MosquittoBroker, free_port


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    cert_file: Path  # the broker's, for 127.0.0.1
    key_file: Path


def make_certificates(folder: Path) -> Certificates:
    """A CA valid for a day and a server certificate it signed for IP 127.0.0.1 (PEM)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "store-gateway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths.key_file.chmod(0o600)
    return paths


class TlsMosquittoBroker(MosquittoBroker):
    """A private Mosquitto whose ``port`` speaks TLS with ``certs``; ``plain_port`` is a
    plain listener on the same broker (for test clients that need no TLS)."""

    def __init__(self, workdir: Path, certs: Certificates, *, name: str = "tls") -> None:
        super().__init__(workdir, name=name)
        self.certs = certs
        self.plain_port = free_port()

    def _write_config(self) -> Path:
        conf = super()._write_config()
        # Listener options apply to the listener defined last: the TLS one, until the
        # plain listener after them.
        conf.write_text(
            conf.read_text()
            + f"certfile {self.certs.cert_file}\nkeyfile {self.certs.key_file}\n"
            + f"listener {self.plain_port} 127.0.0.1\n"
        )
        return conf
