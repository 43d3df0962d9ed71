"""The TLS certificates and SuperNode keys of a Flower deployment: made, and found.

``ensure`` writes, into one folder (``.secrets/`` at the repository root for
``scripts/make_certs.py``):

* ``ca.crt`` / ``ca.key``: a private certificate authority. ``ca.crt`` goes to every
  SuperNode and every machine that runs the ``flwr`` CLI; ``ca.key`` stays here.
* ``superlink.crt`` / ``superlink.key``: the SuperLink's server certificate (SANs
  127.0.0.1, localhost and every extra SAN asked for), signed by the CA; both go to
  the SuperLink host only.
* ``supernode-<i>`` / ``supernode-<i>.pub``: SuperNode ``i``'s authentication key
  pair. The private key goes to that node only; the operator registers the public
  key with ``flwr supernode register``.

Flower 1.42 reads node keys as ECDSA on a NIST curve, the private key in OpenSSH
format (``load_ssh_private_key``) and the public key as an OpenSSH line
(``load_ssh_public_key``); P-384 is the curve Flower generates itself.

Idempotent: existing files are kept, missing ones created (so more SuperNodes add
keys for the new nodes only). A server certificate that lacks a requested SAN is an
error (``CertError``) unless ``force``, which regenerates everything.
``Certs`` names the same files by role, for the deployment that reads them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1
HASH = hashes.SHA384


@dataclass(frozen=True)
class Certs:
    """The files ``ensure`` (``scripts/make_certs.py``) writes, by role."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def superlink_cert(self) -> Path:
        return self.directory / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.directory / "superlink.key"

    def supernode_key(self, index: int) -> Path:
        return self.directory / f"supernode-{index}"

    def supernode_public_key(self, index: int) -> Path:
        return self.directory / f"supernode-{index}.pub"

    def check(self, num_supernodes: int) -> None:
        """Fail before starting anything if a file is missing, saying how to fix it."""
        needed = [self.ca_cert, self.superlink_cert, self.superlink_key]
        for i in range(num_supernodes):
            needed += [self.supernode_key(i), self.supernode_public_key(i)]
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.directory} lacks {', '.join(missing)}; create them with: "
                f"python scripts/make_certs.py --out-dir {self.directory} "
                f"--num-supernodes {num_supernodes}"
            )


class CertError(RuntimeError):
    """Existing files contradict what was asked for."""


def write_private(
    path: Path,
    key: ec.EllipticCurvePrivateKey,
    form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> None:
    """``key`` as unencrypted PEM (PKCS#8, or ``form``), readable by its owner only
    (0600), also if the file existed."""
    none = serialization.NoEncryption()
    data = key.private_bytes(serialization.Encoding.PEM, form, none)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a file meant to be handed out (0644)."""
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _general_name(san: str) -> x509.GeneralName:
    """An IP address SAN for IP literals (TLS checks those), a DNS name otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def _builder(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    issuer: x509.Name | None = None,
) -> x509.CertificateBuilder:
    """A certificate for ``subject``: with no ``issuer``, a self-signed CA that
    signs certificates only, path length 0 (not other CAs); else one whose key
    signs only (the TLS handshake of a server)."""
    ca = issuer is None
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    usage = dict.fromkeys(
        ["content_commitment", "key_encipherment", "data_encipherment"], False
    )
    usage |= {"key_agreement": False, "encipher_only": False, "decipher_only": False}
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage
            ),
            critical=True,
        )
    )


def make_ca(
    out: Path, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new private CA: ``ca.crt`` and ``ca.key``."""
    key = ec.generate_private_key(CURVE())
    cert = _builder("fl-app federation CA", key.public_key(), days).sign(key, HASH())
    write_private(out / "ca.key", key)
    write_public(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The existing CA, to sign a new server certificate without a new CA (which
    would oblige every node and CLI to get the new ``ca.crt``)."""
    cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{out / 'ca.key'} is not an EC private key")
    return cert, key


def make_server_cert(
    out: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[str],
    days: int,
) -> None:
    """The SuperLink's certificate for ``sans``, usable for TLS servers only."""
    key = ec.generate_private_key(CURVE())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        _builder("fl-app superlink", key.public_key(), days, ca_cert.subject)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(s) for s in sans]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski.value
            ),
            critical=False,
        )
        .sign(ca_key, HASH())
    )
    write_private(out / "superlink.key", key)
    write_public(out / "superlink.crt", cert.public_bytes(serialization.Encoding.PEM))


def server_sans(path: Path) -> set[str]:
    """The SANs of an existing certificate, as strings."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return names | set(ext.get_values_for_type(x509.DNSName))


def make_supernode_key(private_path: Path) -> None:
    """An ECDSA P-384 pair: OpenSSH private key (0600) and ``<name>.pub`` line."""
    key = ec.generate_private_key(CURVE())
    write_private(private_path, key, serialization.PrivateFormat.OpenSSH)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_public(
        private_path.with_name(private_path.name + ".pub"),
        public + f" {private_path.name}\n".encode(),
    )


def ensure(
    out: Path,
    num_supernodes: int,
    extra_sans: Iterable[str] = (),
    days: int = 365,
    force: bool = False,
) -> list[str]:
    """Create what is missing under ``out``; return the names of files written.

    CertError if what is there contradicts the request (half a CA, a server
    certificate without a requested SAN) and ``force`` is not set: regenerating
    would silently invalidate certificates already handed out.
    """
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    sans = list(dict.fromkeys([*DEFAULT_SANS, *extra_sans]))
    written: list[str] = []
    ca_files = [out / "ca.crt", out / "ca.key"]
    if force or not any(p.exists() for p in ca_files):
        ca_cert, ca_key = make_ca(out, days)
        written += ["ca.crt", "ca.key"]
    elif all(p.exists() for p in ca_files):
        ca_cert, ca_key = load_ca(out)
    else:
        raise CertError(
            f"only one of ca.crt/ca.key exists in {out}; restore the other or rerun "
            "with --force (which invalidates every certificate issued so far)"
        )
    server = [out / "superlink.crt", out / "superlink.key"]
    if written or not all(p.exists() for p in server):
        make_server_cert(out, ca_cert, ca_key, sans, days)
        written += ["superlink.crt", "superlink.key"]
    else:
        missing = set(sans) - server_sans(server[0])
        if missing:
            raise CertError(
                f"{server[0]} lacks SANs {sorted(missing)}; rerun with --force to "
                "issue a new CA and certificate (redistribute ca.crt afterwards)"
            )
    for i in range(num_supernodes):
        key_path = out / f"supernode-{i}"
        if force or not (key_path.exists() and key_path.with_suffix(".pub").exists()):
            make_supernode_key(key_path)
            written += [key_path.name, key_path.name + ".pub"]
    return written
