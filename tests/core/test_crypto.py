"""Signing key files, the self-signed TLS certificate, and password hashing."""

from __future__ import annotations

import ipaddress
import re
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from nacl.signing import SigningKey
from signedjson.key import (
    decode_verify_key_base64,
    generate_signing_key,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from unpaddedbase64 import encode_base64

from core.crypto.passwords import PasswordHasher
from core.crypto.signing_keys import (
    generate_key_file,
    key_id,
    load_signing_key,
    new_key_version,
    verify_key_base64,
)
from core.crypto.tls import generate_self_signed

KEY_LINE = re.compile(r"^ed25519 ([A-Za-z0-9_]+) ([A-Za-z0-9+/]{43})$")

# -- signing keys ---------------------------------------------------------------------------


def test_key_file_format(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key_file(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 1
    match = KEY_LINE.match(lines[0])
    assert match, text
    assert match.group(1).startswith("a_")
    assert "=" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key_file(path)
    key = load_signing_key(path)
    version, seed_b64 = KEY_LINE.match(path.read_text().strip()).groups()  # type: ignore[union-attr]
    assert isinstance(key, SigningKey)
    assert key_id(key) == f"ed25519:{version}"
    assert encode_base64(bytes(key)) == seed_b64
    # Loading twice gives the same key.
    assert bytes(load_signing_key(path)) == bytes(key)
    assert verify_key_base64(key) == encode_base64(bytes(key.verify_key))


def test_key_file_readable_by_signedjson(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key_file(path)
    ours = load_signing_key(path)
    with open(path, encoding="utf-8") as f:
        theirs = read_signing_keys(f)
    assert len(theirs) == 1
    assert bytes(theirs[0]) == bytes(ours)
    assert theirs[0].version == ours.version  # type: ignore[attr-defined]


def test_reads_a_synapse_written_key(tmp_path: Path) -> None:
    """A key file as Synapse writes it (signedjson's writer) moves here unchanged."""
    synapse_key = generate_signing_key("a_AbCd")
    path = tmp_path / "synapse.signing.key"
    with open(path, "w", encoding="utf-8") as f:
        write_signing_keys(f, [synapse_key])
    key = load_signing_key(path)
    assert key_id(key) == "ed25519:a_AbCd"
    assert bytes(key) == bytes(synapse_key)


def test_reads_a_hand_written_key_line(tmp_path: Path) -> None:
    seed = bytes(range(32))
    path = tmp_path / "signing.key"
    path.write_text(f"ed25519 auto {encode_base64(seed)}\n", encoding="utf-8")
    key = load_signing_key(path)
    assert bytes(key) == seed
    assert key_id(key) == "ed25519:auto"


def test_signatures_verify_with_published_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key_file(path)
    key = load_signing_key(path)
    signed = sign_json({"hello": "world"}, "example.org", key)
    assert key_id(key) in signed["signatures"]["example.org"]
    verify_key = decode_verify_key_base64("ed25519", key.version,  # type: ignore[attr-defined]
                                          verify_key_base64(key))
    verify_signed_json(signed, "example.org", verify_key)
    signed["hello"] = "tampered"
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(signed, "example.org", verify_key)


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    generate_key_file(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_file(path)
    assert path.read_bytes() == before


def test_new_keys_differ(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "a.key")
    generate_key_file(tmp_path / "b.key")
    assert bytes(load_signing_key(tmp_path / "a.key")) != bytes(
        load_signing_key(tmp_path / "b.key"))
    assert re.fullmatch(r"a_[A-Za-z0-9]{4}", new_key_version())


@pytest.mark.parametrize("content", ["", "\n", "garbage\n", "ed25519 a_x !!!notbase64!!!\n",
                                     "rsa a_x AAAA\n"])
def test_bad_key_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "signing.key"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        load_signing_key(path)


# -- TLS ------------------------------------------------------------------------------------


def _sans(cert_path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _handshake(cert_path: Path, key_path: Path, server_hostname: str) -> None:
    """A real TLS handshake in memory: the client trusts only this certificate and checks
    the host name against it."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, conn, out_bio, peer_in in (("client", client, c_out, s_in),
                                             ("server", server, s_out, c_in)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            data = out_bio.read()
            if data:
                peer_in.write(data)
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_tls_certificate_for_dns_name(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed("chat.example.org", cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sans = _sans(cert)
    assert sans.get_values_for_type(x509.DNSName) == ["chat.example.org"]
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _handshake(cert, key, "chat.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, "other.example.org")


def test_tls_certificate_ignores_port(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed("localhost:8448", cert, key)
    assert _sans(cert).get_values_for_type(x509.DNSName) == ["localhost"]
    _handshake(cert, key, "localhost")
    _handshake(cert, key, "127.0.0.1")


@pytest.mark.parametrize(("server_name", "address"), [
    ("192.0.2.7", "192.0.2.7"),
    ("192.0.2.7:8448", "192.0.2.7"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:8448", "2001:db8::1"),
])
def test_tls_certificate_for_ip_literal(tmp_path: Path, server_name: str, address: str) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed(server_name, cert, key)
    sans = _sans(cert)
    assert sans.get_values_for_type(x509.DNSName) == []
    assert ipaddress.ip_address(address) in sans.get_values_for_type(x509.IPAddress)
    _handshake(cert, key, address)


def test_tls_files_never_overwritten(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed("example.org", cert, key)
    before = cert.read_bytes(), key.read_bytes()
    with pytest.raises(FileExistsError):
        generate_self_signed("example.org", cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == before


# -- passwords ------------------------------------------------------------------------------


@pytest.fixture
async def hasher() -> AsyncIterator[PasswordHasher]:
    h = PasswordHasher()
    yield h
    h.close()


async def test_password_hash_and_verify(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in hashed
    assert "correct horse" not in hashed
    assert await hasher.verify(hashed, "correct horse battery staple") is True
    assert await hasher.verify(hashed, "correct horse battery stapler") is False
    assert await hasher.verify(hashed, "") is False
    # Salted: the same password hashes differently each time.
    assert await hasher.hash("correct horse battery staple") != hashed


async def test_password_unicode(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("pässwörd ✓ 密码")
    assert await hasher.verify(hashed, "pässwörd ✓ 密码") is True
    assert await hasher.verify(hashed, "passwort ✓ 密码") is False


@pytest.mark.parametrize("garbage", ["", "not a hash", "$argon2id$v=19$m=1,t=1,p=1$bad",
                                     "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"])
async def test_verify_garbage_hash_is_false(hasher: PasswordHasher, garbage: str) -> None:
    assert await hasher.verify(garbage, "password") is False
    assert hasher.needs_rehash(garbage) is True


async def test_needs_rehash(hasher: PasswordHasher) -> None:
    current = await hasher.hash("password")
    assert hasher.needs_rehash(current) is False
    weaker = PasswordHasher(memory_kib=8 * 1024, time_cost=1)
    try:
        old = await weaker.hash("password")
    finally:
        weaker.close()
    assert hasher.needs_rehash(old) is True
    # An old hash still verifies, so the login that re-hashes it can succeed.
    assert await hasher.verify(old, "password") is True
