"""Certificates and keys for a throwaway local control plane.

One CA signs the API server's serving certificate and the client certificates, so a
single ``ca.crt`` lets clients verify the server and lets the server verify clients
(``--client-ca-file``). The admin is in ``system:masters``, which RBAC lets do everything
without any binding. kube-controller-manager gets the username a real cluster gives it,
``system:kube-controller-manager``, whose bootstrap ClusterRole lets it create the
ServiceAccounts and tokens its controllers then run as. The service-account key pair is
RSA because it signs and verifies service-account tokens (RS256).

Everything is generated fresh for each control plane and lives only in its work
directory, so none of it is a secret worth protecting beyond file permissions.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of --service-cluster-ip-range is the in-cluster "kubernetes" Service;
# the API server checks that its serving certificate covers it.
SERVICE_IP = "10.0.0.1"
SERVING_DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
# The API server binds 127.0.0.1 only, so ::1 is deliberately not a SAN.
SERVING_IPS = ("127.0.0.1", SERVICE_IP)
ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# Long enough for any test session or `make run`, short enough to be obviously throwaway.
VALIDITY = datetime.timedelta(days=7)
# Tolerates small clock differences between this process and the API server's checks.
BACKDATE = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class PkiFiles:
    """Paths of the PEM files written by :func:`generate_pki`."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    controller_manager_cert: Path
    controller_manager_key: Path
    service_account_key: Path
    service_account_public_key: Path


# TLS keys are ECDSA P-256: generating them is instant, unlike RSA.
TlsKey = ec.EllipticCurvePrivateKey


def _new_tls_key() -> TlsKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
    )


def _make_ca() -> tuple[x509.Certificate, TlsKey]:
    key = _new_tls_key()
    name = _name("agent-registry-local-ca")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: TlsKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, TlsKey]:
    key = _new_tls_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _serving_sans() -> list[x509.GeneralName]:
    dns: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVING_DNS_NAMES]
    ips: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    return dns + ips


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: TlsKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_pki(directory: Path) -> PkiFiles:
    """Create the CA, the serving and client certificates and the service-account keys in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca()
    serving_cert, serving_key = _make_leaf(
        ca_cert, ca_key, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, _serving_sans()
    )
    admin_cert, admin_key = _make_leaf(ca_cert, ca_key, _name(ADMIN_USER, ADMIN_GROUP), ExtendedKeyUsageOID.CLIENT_AUTH)
    kcm_cert, kcm_key = _make_leaf(ca_cert, ca_key, _name(CONTROLLER_MANAGER_USER), ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PkiFiles(
        ca_cert=_write(directory / "ca.crt", _cert_pem(ca_cert)),
        ca_key=_write(directory / "ca.key", _key_pem(ca_key), private=True),
        serving_cert=_write(directory / "apiserver.crt", _cert_pem(serving_cert)),
        serving_key=_write(directory / "apiserver.key", _key_pem(serving_key), private=True),
        admin_cert=_write(directory / "admin.crt", _cert_pem(admin_cert)),
        admin_key=_write(directory / "admin.key", _key_pem(admin_key), private=True),
        controller_manager_cert=_write(directory / "kube-controller-manager.crt", _cert_pem(kcm_cert)),
        controller_manager_key=_write(directory / "kube-controller-manager.key", _key_pem(kcm_key), private=True),
        service_account_key=_write(directory / "sa.key", _key_pem(sa_key), private=True),
        service_account_public_key=_write(directory / "sa.pub", sa_public),
    )
