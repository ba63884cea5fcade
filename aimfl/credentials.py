"""TLS certificates for the SuperLink and authentication keys for the SuperNodes (`cryptography`).

- `make_tls_certificates`: a private CA (`ca.crt`, `ca.key`) and the SuperLink's certificate
  (`server.pem`, `server.key`) signed by it, valid for the given host names and IP addresses
  (subject alternative names: a SuperNode checks the address it dials against them). Sites get
  `ca.crt` only; `ca.key` signs certificates and stays with the operator.
- `make_site_key`: a site's ECDSA P-384 key pair in OpenSSH format, what
  `ssh-keygen -t ecdsa -b 384 -N "" -f NAME` writes: the private key stays on the site
  (`flower-supernode --auth-supernode-private-key`), the `.pub` goes to the operator
  (`flwr supernode register`).

Private keys are written owner-only (0600), never overwritten, and never printed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: str, data: bytes, private: bool) -> None:
    """Writes a new file (an existing one is an error: keys are not replaced by accident)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; remove it first to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_tls_certificates(out: str, hosts: list[str], days: int = 365) -> dict[str, str]:
    """Writes ca.crt, ca.key, server.pem and server.key into `out`; returns their paths.

    The certificate names `hosts` (what the sites dial: the Fleet-only proxy) and localhost (the SuperLink on the
    operator's loopback, which the proxy and the operator's `flwr` commands reach)."""
    if not hosts:
        raise ValueError("give at least one host name or IP address the SuperNodes will dial")
    hosts = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in ("ca.crt", "ca.key", "server.pem", "server.key")}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist; remove them first to replace them")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aimfl federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        # strict verifiers (Python 3.13's default) want the issuer's key id in every leaf certificate
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths["ca.key"], _pem_key(ca_key), private=True)
    _write(paths["server.key"], _pem_key(server_key), private=True)
    _write(paths["ca.crt"], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths["server.pem"], server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths


def make_site_key(path: str, comment: str | None = None) -> tuple[str, str]:
    """Writes an ECDSA P-384 key pair as `path` (OpenSSH private key) and `path.pub`; returns both paths."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    public_path = path + ".pub"
    existing = [p for p in (path, public_path) if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist; remove them first to replace them")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(path, private, private=True)
    _write(public_path, public + f" {comment or os.path.basename(path)}\n".encode(), private=False)
    return path, public_path
