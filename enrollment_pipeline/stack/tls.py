"""A private CA and the broker's certificate for the stack's SASL_SSL listener (`cryptography`).

Made when missing, expiring or issued for another host, and kept in `{state}/secrets`: the CA's
certificate (what clients trust, KAFKA_SSL_CAFILE) and the broker's key and chain in one PEM
file (Kafka's `ssl.keystore.type=PEM`), 0600. The CA's key is not kept: a new broker certificate
comes with a new CA.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enrollment_pipeline.stack.process import write_private

VALID_FOR = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)


def _subject_names(host: str) -> list:
    from cryptography import x509

    names: list = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return names


def is_current(ca_file: Path, keystore: Path, host: str) -> bool:
    """Both files exist, the broker's certificate names `host` and is not about to expire."""
    from cryptography import x509

    if not (ca_file.exists() and keystore.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificates(keystore.read_bytes())[0]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return False
    return all(name in names for name in _subject_names(host))


def make_broker_certificate(ca_file: Path, keystore: Path, host: str) -> None:
    """A new CA and a broker certificate for `host`, signed by it, written 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enrollment-pipeline local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    broker = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_subject_names(host)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    chain = broker.public_bytes(pem).decode() + ca.public_bytes(pem).decode()
    write_private(keystore, key_pem + chain)
    write_private(ca_file, ca.public_bytes(pem).decode())
