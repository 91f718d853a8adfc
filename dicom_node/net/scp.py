"""The pynetdicom adapter: association policy, C-ECHO and C-STORE handlers, and the listening server.

Handlers translate the DIMSE request, call one service function and map its errors to a status
(`dimse_boundary`); they hold no business rules.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts, VerificationPresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.core import metrics
from dicom_node.core.errors import InstanceRejected
from dicom_node.core.observability import assoc_id, bound, correlation_id, new_correlation_id
from dicom_node.dicom.dimse_status import Status
from dicom_node.dicom.validation import ReceiveContext
from dicom_node.net.servers import HandedOffServer, ListeningServer
from dicom_node.net.status import status_for_error
from dicom_node.services import ingest
from dicom_node.services.transfer_audit import (
    AssociationTally,
    write_association_refused,
    write_transfer_events,
)

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)

# ErrorComment (0000,0902) is LO: 64 characters at most.
_ERROR_COMMENT_MAX = 64


@dataclass(frozen=True, slots=True)
class ScpConfig:
    ae_title: str
    host: str
    port: int
    allowed_calling_aes: tuple[str, ...]
    max_associations: int
    max_pdu_size: int
    network_timeout_seconds: float
    dimse_timeout_seconds: float
    ssl_context: ssl.SSLContext | None = None


class _AssociationRefs:
    """Our id for each association, so log lines of one association can be joined, and its tally."""

    def __init__(self) -> None:
        self._refs: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._tallies: weakref.WeakKeyDictionary[Association, AssociationTally] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def ref(self, assoc: Association) -> str:
        with self._lock:
            ref = self._refs.get(assoc)
            if ref is None:
                ref = self._refs[assoc] = new_correlation_id("as")
            return ref

    def tally(self, assoc: Association) -> AssociationTally:
        with self._lock:
            tally = self._tallies.get(assoc)
            if tally is None:
                tally = self._tallies[assoc] = AssociationTally()
            return tally

    def pop_tally(self, assoc: Association) -> AssociationTally:
        with self._lock:
            return self._tallies.pop(assoc, None) or AssociationTally()


_REFS = _AssociationRefs()


@contextmanager
def _association_context(assoc: Association) -> Iterator[str]:
    ref = _REFS.ref(assoc)
    with bound(assoc_id, ref), bound(correlation_id, ref):
        yield ref


def _failure(status: Status, code: str) -> Dataset:
    answer = Dataset()
    answer.Status = int(status)
    answer.ErrorComment = code[:_ERROR_COMMENT_MAX]
    return answer


def on_c_store(event: Event, node: Node) -> int | Dataset:
    """Store the spooled instance; Success only after ingest returned (durable and committed)."""
    with _association_context(event.assoc) as ref:
        started = time.perf_counter()
        request = cast("C_STORE", event.request)
        abstract_syntax, transfer_syntax = event.context.abstract_syntax, event.context.transfer_syntax
        received = ingest.ReceivedInstance(
            path=Path(event.dataset_path),
            context=ReceiveContext(
                context_sop_class_uid=str(abstract_syntax),
                affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                transfer_syntax_uid=str(transfer_syntax),
            ),
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
            called_ae_title=str(event.assoc.acceptor.ae_title).strip(),
            association_ref=ref,
        )
        tally = _REFS.tally(event.assoc)
        try:
            outcome = ingest.receive_instance(node, received)
        except Exception as error:  # the boundary: every failure becomes a status, the node keeps serving
            status, code = status_for_error(error)
            if isinstance(error, InstanceRejected):
                tally.refused(error.codes)
            else:
                tally.failure()
            if status is Status.OUT_OF_RESOURCES:
                logger.error(
                    "instance not stored",
                    exc_info=True,
                    extra={"event": "instance_store_failed", "error_code": code, "status": int(status)},
                )
            return _failure(status, code)
        finally:
            metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        tally.stored(outcome.study_ref, outcome.result.value)
        return int(Status.SUCCESS)


def on_c_echo(event: Event) -> int:
    return int(Status.SUCCESS)


def _on_conn_open(event: Event) -> None:
    # Nagle plus delayed ACK costs ~40 ms per instance on a request/response protocol.
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _on_established(event: Event) -> None:
    metrics.ASSOCIATIONS.labels(result="accepted", reason="none").inc()
    metrics.ASSOCIATIONS_ACTIVE.inc()
    with _association_context(event.assoc):
        logger.info(
            "association established",
            extra={
                "event": "association_established",
                "calling_ae": str(event.assoc.requestor.ae_title).strip(),
            },
        )


def _on_closed(event: Event, node: Node) -> None:
    metrics.ASSOCIATIONS_ACTIVE.dec()
    with _association_context(event.assoc) as ref:
        logger.info("association closed", extra={"event": "association_closed", "reason": event.event.name})
        write_transfer_events(
            node,
            _REFS.pop_tally(event.assoc),
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            client_address=_peer_address(event.assoc),
            association_ref=ref,
            aborted=event.event is evt.EVT_ABORTED,
        )


def _peer_address(assoc: Association) -> str | None:
    address = getattr(assoc.requestor, "address", None)
    return str(address) if address else None


def rejection_reason(assoc: Association) -> str:
    """Why pynetdicom refused the association, a bounded label: its acceptor checks re-run in the
    order in which the last failing one decides (pynetdicom 3.0 `ACSE._negotiate_as_acceptor`)."""
    ae = assoc.ae
    request = assoc.requestor.primitive
    acceptors = [other for other in ae.active_associations if other.is_acceptor]
    if len(acceptors) > ae.maximum_associations:
        return "capacity"
    called = assoc.acceptor.ae_title.strip()
    if request is not None and ae.require_called_aet and request.called_ae_title != called:
        return "called_ae_unknown"
    allowed = [title.strip() for title in ae.require_calling_aet]
    if request is not None and allowed and request.calling_ae_title not in allowed:
        return "calling_ae_not_allowed"
    return "other"


def _on_rejected(event: Event, node: Node) -> None:
    reason = rejection_reason(event.assoc)
    metrics.ASSOCIATIONS.labels(result="rejected", reason=reason).inc()
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    called_ae = str(event.assoc.acceptor.ae_title).strip()
    with _association_context(event.assoc):
        logger.warning(
            "association rejected",
            extra={
                "event": "association_rejected",
                "calling_ae": calling_ae,
                "called_ae": called_ae,
                "reason": reason,
            },
        )
        write_association_refused(
            node,
            calling_ae=calling_ae,
            called_ae=called_ae,
            client_address=_peer_address(event.assoc),
            reason=reason,
        )


def _register_retired_storage_classes() -> None:
    """Give the retired storage SOP classes pynetdicom lists but does not route a Storage service.

    Without it a C-STORE on such a context (e.g. retired US Image Storage) aborts the association,
    losing every instance after it.
    """
    for context in StoragePresentationContexts:
        uid = cast(str, context.abstract_syntax)
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, f"RetiredStorage_{uid.replace('.', '_')}", StorageServiceClass)


def build_ae(config: ScpConfig) -> AE:
    _register_retired_storage_classes()
    ae = AE(ae_title=config.ae_title)
    transfer_syntaxes = list(AllTransferSyntaxes)
    for context in [*VerificationPresentationContexts, *StoragePresentationContexts]:
        ae.add_supported_context(cast(str, context.abstract_syntax), transfer_syntaxes)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu_size
    ae.network_timeout = config.network_timeout_seconds
    ae.dimse_timeout = config.dimse_timeout_seconds
    ae.acse_timeout = config.dimse_timeout_seconds
    ae.require_called_aet = True
    if config.allowed_calling_aes:
        ae.require_calling_aet = list(config.allowed_calling_aes)
    return ae


class ScpServer:
    """A running, non-blocking SCP; `stop` drains in-flight associations before closing."""

    def __init__(self, ae: AE, server: ThreadedAssociationServer) -> None:
        self._ae = ae
        self._server = server
        self.port: int = server.server_address[1]
        self.stopping = threading.Event()

    @property
    def active_associations(self) -> int:
        return len(self._server.active_associations)

    def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let established associations finish for `grace_seconds`, then abort the rest.

        An instance is acknowledged only after it is durable, so aborting loses nothing the sender
        was told is stored; the sender retries what was not acknowledged.
        """
        self.stopping.set()
        self._server.shutdown()
        deadline = time.monotonic() + grace_seconds
        while self._server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self._server.active_associations:
            assoc.abort()
        logger.info("scp stopped", extra={"event": "scp_stopped"})


def start_scp(node: Node, config: ScpConfig, *, channel: socket.socket | None = None) -> ScpServer:
    """Listen on `config`'s address, or, with `channel`, serve the connections a supervisor hands off."""
    ae = build_ae(config)
    handlers: list[tuple[Any, Callable[..., Any]] | tuple[Any, Callable[..., Any], list[Any]]] = [
        (evt.EVT_C_STORE, on_c_store, [node]),
        (evt.EVT_C_ECHO, on_c_echo),
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_ESTABLISHED, _on_established),
        (evt.EVT_RELEASED, _on_closed, [node]),
        (evt.EVT_ABORTED, _on_closed, [node]),
        (evt.EVT_REJECTED, _on_rejected, [node]),
    ]
    server_class = ListeningServer if channel is None else HandedOffServer
    server = ae.make_server(
        (config.host, config.port),
        evt_handlers=handlers,
        ssl_context=config.ssl_context,
        server_class=server_class,
    )
    if isinstance(server, HandedOffServer) and channel is not None:
        server.adopt_channel(channel, config.port)
    ae._servers.append(server)
    thread = threading.Thread(target=server.serve_forever, name="dicom-node-scp-accept", daemon=True)
    thread.start()
    scp = ScpServer(ae, server)
    if isinstance(server, HandedOffServer):
        threading.Thread(
            target=server.report_load, args=(scp.stopping,), name="dicom-node-load-report", daemon=True
        ).start()
    return scp
