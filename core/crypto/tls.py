"""A self-signed TLS certificate for the federation listener (generate-config)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def generate_self_signed(server_name: str, cert_path: Path, key_path: Path) -> None:
    """Write a certificate valid ten years for ``server_name`` (host part) and loopback."""
    # "[v6]:port" / "[v6]": the address is inside the brackets; otherwise drop any ":port".
    if server_name.startswith("["):
        host = server_name[1:].split("]", 1)[0]
    else:
        host = server_name.rsplit(":", 1)[0]
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    for extra in ("127.0.0.1", "::1"):
        if extra != host:
            names.append(x509.IPAddress(ipaddress.ip_address(extra)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(key_path, "xb") as f:
        f.write(key_bytes)
    key_path.chmod(0o600)
    with open(cert_path, "xb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
