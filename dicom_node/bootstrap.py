"""The composition root: the only module that reads Settings and wires the layers together."""

from __future__ import annotations

import logging
import ssl
import tempfile
import warnings
from pathlib import Path

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config
from sqlalchemy.engine import make_url

from dicom_node.core.clock import Clock, SystemClock
from dicom_node.core.settings import Settings
from dicom_node.dicom.deid import DeidPolicy
from dicom_node.dicom.deid_keys import SECRET_BYTES, DeidKeys, DeidSecretInvalid, load_or_create_secret
from dicom_node.dicom.validation import ValidationRules
from dicom_node.net import reactor_wakeup
from dicom_node.net.scp import ScpConfig
from dicom_node.services.deid_stage import DeidStage
from dicom_node.services.node import IngestPolicy, Node
from dicom_node.services.worker import WorkerConfig
from storage import migrate
from storage.blobs import FileBlobStore
from storage.db import make_engine, make_sessionmaker

logger = logging.getLogger(__name__)


def configure_libraries(spool_dir: Path) -> None:
    """Library switches, set in one place per process."""
    # C-FIND/GET/MOVE identifiers are PHI: pynetdicom must not log them.
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # Stream each received data set to a spool file, so a 2 GB study keeps memory flat.
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    # Correlation ids bound in the accept path reach association threads.
    pynetdicom_config.PASS_CONTEXTVARS = True
    # pynetdicom's reactors poll with 1 ms sleeps; wake them on work instead (see the module).
    if not reactor_wakeup.install():
        logger.warning("pynetdicom version not covered by reactor_wakeup", extra={"event": "wakeup_skipped"})
    # Our validation decides what is acceptable; pydicom must not warn with values in the text.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # pynetdicom spools through tempfile: keep the spool on the store's filesystem so adopting a
    # received file is a rename, not a copy.
    spool_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(spool_dir)


def configure_file_tools() -> None:
    """pydicom quiet for tools that read the user's files: its warnings can quote values (PHI)."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def deid_keys(settings: Settings, *, secret_file: Path | None = None) -> DeidKeys:
    """The keys for a tool run: from `secret_file`, else `DEID_SECRET` (64 hex digits).

    Never creates a secret: a tool run against the wrong one would silently make new pseudonyms.
    """
    if secret_file is not None:
        if not secret_file.is_file():
            raise DeidSecretInvalid("The secret file does not exist.")
        return DeidKeys.from_secret(load_or_create_secret(secret_file))
    if settings.deid_secret is None:
        raise DeidSecretInvalid("No de-identification secret: use --secret-file or DICOM_NODE_DEID_SECRET.")
    return _keys_from_setting(settings)


def _keys_from_setting(settings: Settings) -> DeidKeys:
    assert settings.deid_secret is not None
    try:
        secret = bytes.fromhex(settings.deid_secret.get_secret_value())
    except ValueError as exc:
        raise DeidSecretInvalid("DICOM_NODE_DEID_SECRET must be 64 hexadecimal digits.") from exc
    if len(secret) != SECRET_BYTES:
        raise DeidSecretInvalid("DICOM_NODE_DEID_SECRET must be 64 hexadecimal digits.")
    return DeidKeys.from_secret(secret)


def node_secret_file(settings: Settings) -> Path:
    return settings.data_dir / "secrets" / "deid-secret"


def deid_stage(settings: Settings) -> DeidStage:
    """The node's own de-identification: `DEID_SECRET`, else the secret kept under DATA_DIR (made on
    first start, mode 0600). Nodes sharing a database must share the secret (set DEID_SECRET)."""
    if settings.deid_secret is not None:
        keys = _keys_from_setting(settings)
    else:
        keys = DeidKeys.from_secret(load_or_create_secret(node_secret_file(settings)))
    policy = DeidPolicy(default_issuer=settings.ae_title, node_ae_title=settings.ae_title)
    return DeidStage(policy=policy, keys=keys)


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(poll_seconds=settings.job_poll_seconds, lease_seconds=settings.job_lease_seconds)


def build_node(settings: Settings, *, clock: Clock | None = None) -> Node:
    """Build the node's dependencies once; nothing here runs at import time."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = FileBlobStore(settings.data_dir)
    blobs.prepare()
    engine = make_engine(settings.resolved_database_url)
    return Node(
        engine=engine,
        sessions=make_sessionmaker(engine),
        blobs=blobs,
        clock=clock or SystemClock(),
        ingest=IngestPolicy(
            rules=ValidationRules(
                max_rows=settings.max_rows,
                max_columns=settings.max_columns,
                modality_allowlist=frozenset(settings.modality_allowlist),
            ),
            duplicate_policy=settings.duplicate_policy,
        ),
        study_idle_seconds=settings.study_idle_seconds,
        job_max_attempts=settings.job_max_attempts,
    )


def upgrade_database(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)


def scp_config(settings: Settings) -> ScpConfig:
    return ScpConfig(
        ae_title=settings.ae_title,
        host=settings.dicom_host,
        port=settings.dicom_port,
        allowed_calling_aes=tuple(settings.allowed_calling_aes),
        max_associations=settings.max_associations,
        max_pdu_size=settings.max_pdu_size,
        network_timeout_seconds=settings.network_timeout_seconds,
        dimse_timeout_seconds=settings.dimse_timeout_seconds,
        ssl_context=_ssl_context(settings),
    )


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): server certificate, and client certificates when a CA is configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(settings.tls_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe_database(settings: Settings) -> str:
    """The database URL with any password hidden, for the start-up line."""
    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def warn_about_open_defaults(settings: Settings) -> None:
    if not settings.allowed_calling_aes:
        logger.warning(
            "ALLOWED_CALLING_AES is empty: any calling AE may store instances",
            extra={"event": "calling_ae_allowlist_empty"},
        )
