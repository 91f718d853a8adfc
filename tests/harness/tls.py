"""DICOM TLS test material: a throwaway PKI made with the `openssl` CLI, and DCMTK's TLS options."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CALLING_AE = "TLS_SCU"


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA and two leaf certificates it signed; keys are unencrypted PEM, so no tool asks for a password."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: the TLS tests make their certificates with it")
    result = subprocess.run(
        [openssl, *args],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"openssl {args[0]} failed: {result.stderr}"


def _leaf(
    directory: Path, name: str, *, serial: int, subject: str, extensions: list[str]
) -> tuple[Path, Path]:
    (directory / f"{name}.ext").write_text("\n".join(extensions) + "\n", encoding="ascii")
    _openssl(
        directory, "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
    )  # fmt: skip
    _openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", str(serial), "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
    )  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one for TLS_SCU."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-sha256", "-subj", "/CN=dicom-node test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    common = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    server_cert, server_key = _leaf(
        directory,
        "server",
        serial=2,
        subject="/CN=127.0.0.1",
        extensions=[*common, "extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
    )
    client_cert, client_key = _leaf(
        directory,
        "client",
        serial=3,
        subject=f"/CN={CALLING_AE}",
        extensions=[*common, "extendedKeyUsage=clientAuth"],
    )
    return Pki(directory / "ca.pem", server_cert, server_key, client_cert, client_key)


def dcmtk_tls_args(pki: Pki, *, certificate: bool = True) -> list[str]:
    # -pw: the keys are unencrypted; without it DCMTK would prompt on stdin for a password.
    identity = ["+tls", str(pki.client_key), str(pki.client_cert), "-pw"] if certificate else ["+tla"]
    return [*identity, "+cf", str(pki.ca_cert)]
