"""The pynetdicom anchor of bench/ingest.py: the fastest durable receiver pynetdicom allows, nothing else.

An AE with every storage context and Verification, chunked receive (as the node), TCP_NODELAY on
each association; its C-STORE handler fsyncs the spooled file, renames it into `OUT` and answers
0x0000. No parsing, no database, no directory fsync: the ceiling for any node built on pynetdicom
3.0 on this machine, measured in the same run as the node so the gap is the node's own work.

    python bench/pynetdicom_anchor.py OUT PORT
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import tempfile
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

AE_TITLE = "DICOM_NODE"


def main() -> None:
    out, port = Path(sys.argv[1]), int(sys.argv[2])
    spool = out / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool)
    numbers = itertools.count()

    def on_open(event: Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]

    def on_store(event: Event) -> int:
        path = event.dataset_path
        with open(path, "rb+") as spooled:
            os.fsync(spooled.fileno())
        os.rename(path, out / f"{next(numbers)}.dcm")
        return 0x0000

    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 32
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    print(f"listening on {port}", flush=True)
    ae.start_server(
        ("127.0.0.1", port), evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_C_STORE, on_store)]
    )


if __name__ == "__main__":
    main()
