"""The real-world corpus over the network: DCMTK storescu and pynetdicom send every file, round by round.

Each round (see `tests.harness.corpus`) goes to a fresh node and database, so no SOP Instance UID is
sent twice to one node. Every file is either stored, and reads back as what was sent, or refused with
exactly the status and code `EXPECTED_REJECTIONS` names, with a rejection row and its quarantined bytes.

What "as sent" means depends on the sender. pynetdicom sends a path's data set bytes unchanged, so the
stored bytes after the file meta must equal the file's. storescu re-encodes what it sends (explicit
sequence lengths, OB for encapsulated pixel data, no trailing padding, Big Endian converted to Little
Endian), so the stored data set must decode to the file's, element by element, and its bytes must equal
DCMTK's own encoding of the file in the stored transfer syntax (`dcmconv`, the same DCMTK library).
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pynetdicom._config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from dicom_node.bootstrap import build_node, configure_libraries, scp_config
from dicom_node.core.clock import ManualClock
from dicom_node.dicom.dimse_status import CODE_STATUS, Status, primary_code
from dicom_node.net.scp import ScpServer, start_scp
from dicom_node.services.node import Node
from storage.models import Instance, Rejection, ValidationResult
from tests.conftest import make_settings
from tests.harness import dicom_tools
from tests.harness.corpus import (
    EXPECTED_REJECTIONS,
    STORESCU_PROPOSE,
    STORESCU_UNREADABLE,
    CorpusFile,
    corpus,
    rounds,
)
from tests.harness.postgres import TEMPLATE_DB, PostgresCluster

ROUNDS = rounds()
# Rounds 2.. are small (the instances with many copies): one test sends them all, each to its own node.
ROUND_GROUPS = {"round0": (0,), "round1": (1,), "rounds2+": tuple(range(2, len(ROUNDS)))}
_TRAILING_PADDING = 0xFFFCFFFC
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_DCMCONV_SYNTAX = {
    ExplicitVRLittleEndian: "+te",
    ImplicitVRLittleEndian: "+ti",
    ExplicitVRBigEndian: "+tb",
    DeflatedExplicitVRLittleEndian: "+td",
}
SCU_AE = {"storescu": "STORESCU", "pynetdicom": "PYNETDICOM"}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    error_comment: str | None


# -- sending ----------------------------------------------------------------------------------------


def _by_sop_class(files: Iterable[CorpusFile]) -> list[list[CorpusFile]]:
    """One association per SOP class: few contexts each, and one class's trouble stays in its association."""
    by_class: dict[str, list[CorpusFile]] = defaultdict(list)
    for corpus_file in files:
        by_class[corpus_file.sop_class_uid].append(corpus_file)
    return [by_class[sop_class] for sop_class in sorted(by_class)]


def _with_agreeing_meta(corpus_file: CorpusFile, directory: Path) -> Path:
    """A copy whose file meta names the data set's own SOP Class/Instance UIDs; the data set is untouched.

    pynetdicom sending a path announces the file meta's UIDs, and a few corpus files carry stale ones.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(corpus_file.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(corpus_file.sop_instance_uid)
    meta.TransferSyntaxUID = UID(corpus_file.transfer_syntax_uid)
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path = directory / corpus_file.name.replace("/", "_")
    path.write_bytes(buffer.getvalue() + corpus_file.dataset_bytes())
    return path


def _no_delay(event: evt.Event) -> None:
    # The SCU's side of the request/response exchange; without it each store waits on delayed ACKs.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_with_pynetdicom(port: int, files: Sequence[CorpusFile], directory: Path) -> dict[str, Answer]:
    """Each file in its own transfer syntax, its data set bytes sent as they are in the file."""
    directory.mkdir(parents=True, exist_ok=True)
    answers: dict[str, Answer] = {}
    for batch in _by_sop_class(files):
        ae = AE(ae_title=SCU_AE["pynetdicom"])
        for syntax in sorted({f.transfer_syntax_uid for f in batch}):
            ae.add_requested_context(batch[0].sop_class_uid, syntax)
        assoc = ae.associate(
            "127.0.0.1", port, ae_title="DICOM_NODE", evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
        )
        assert assoc.is_established
        try:
            for corpus_file in batch:
                if not assoc.is_established:
                    break  # aborted by the node: the rest of the batch is reported as unanswered
                path = (
                    corpus_file.path
                    if corpus_file.meta_agrees
                    else _with_agreeing_meta(corpus_file, directory)
                )
                response = assoc.send_c_store(path)
                if "Status" in response:
                    comment = response.get("ErrorComment")
                    answers[corpus_file.name] = Answer(
                        int(response.Status), None if comment is None else str(comment)
                    )
        finally:
            if assoc.is_established:
                assoc.release()
    return answers


_SENDING = re.compile(r"^I: Sending file: (?P<path>.+)$", re.MULTILINE)
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x(?P<status>[0-9a-fA-F]{4})")
_COMMENT = re.compile(r"\(0000,0902\) LO \[(?P<comment>[^\]]*)\]")


def _parse_storescu(output: str, by_path: dict[str, CorpusFile]) -> dict[str, Answer]:
    """The C-STORE response storescu received for each file it sent (from its debug output)."""
    answers: dict[str, Answer] = {}
    starts = list(_SENDING.finditer(output))
    for index, start in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(output)
        block = output[start.end() : end]
        status = _STATUS.search(block)
        if status is None:
            continue  # storescu could not send the file, or got no answer
        comment = _COMMENT.search(block)
        answers[by_path[start["path"]].name] = Answer(
            int(status["status"], 16), None if comment is None else comment["comment"]
        )
    return answers


def send_with_storescu(port: int, files: Sequence[CorpusFile]) -> dict[str, Answer]:
    """storescu -R: one association per SOP class and transfer syntax option (see STORESCU_PROPOSE)."""
    by_option: dict[tuple[str, ...], list[CorpusFile]] = defaultdict(list)
    for corpus_file in files:
        if corpus_file.name in STORESCU_UNREADABLE:
            continue  # DCMTK cannot read it; pynetdicom sends it
        assert corpus_file.transfer_syntax_uid in STORESCU_PROPOSE, (
            f"{corpus_file.name}: add its transfer syntax to STORESCU_PROPOSE"
        )
        by_option[STORESCU_PROPOSE[corpus_file.transfer_syntax_uid]].append(corpus_file)
    answers: dict[str, Answer] = {}
    for option, members in sorted(by_option.items()):
        for batch in _by_sop_class(members):
            by_path = {str(f.path): f for f in batch}
            result = dicom_tools.storescu(
                port,
                [f.path for f in batch],
                calling_ae=SCU_AE["storescu"],
                extra=["-d", "-R", "-nh", *option],
            )
            output = result.stdout + result.stderr
            assert "Association Accepted" in output, output[-2000:]
            answers.update(_parse_storescu(output, by_path))
    return answers


# -- comparing --------------------------------------------------------------------------------------


def _little_endian(value: bytes, vr: str, little_endian: bool) -> bytes:
    """Bulk binary value bytes in little-endian order, whatever encoding they were read in."""
    width = _SWAP_WIDTH.get(vr, 1)
    if little_endian or width == 1 or len(value) % width:
        return value
    return np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def assert_same_dataset(
    sent: Dataset, stored: Dataset, *, sent_le: bool, stored_le: bool, where: str
) -> None:
    """Element by element, nested sequences and pixel data bytes included; group lengths and padding aside."""

    def tags(ds: Dataset) -> set[int]:
        return {int(tag) for tag in ds.keys() if tag.element != 0 and tag != _TRAILING_PADDING}  # noqa: SIM118

    assert tags(sent) == tags(stored), f"{where}: tags differ: {sorted(map(hex, tags(sent) ^ tags(stored)))}"
    for tag in sorted(tags(sent)):
        a, b = sent[tag], stored[tag]
        here = f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if a.VR == "SQ":
            assert len(a.value) == len(b.value), here
            for index, (item_a, item_b) in enumerate(zip(a.value, b.value, strict=True)):
                assert_same_dataset(
                    item_a, item_b, sent_le=sent_le, stored_le=stored_le, where=f"{here}[{index}]"
                )
        elif isinstance(a.value, bytes) and isinstance(b.value, bytes):
            assert _little_endian(a.value, a.VR, sent_le) == _little_endian(b.value, b.VR, stored_le), here
        else:
            assert a.value == b.value, f"{here}: {a.value!r} != {b.value!r}"


def _dataset_bytes(path: Path) -> tuple[str, bytes]:
    meta, offset = split_dataset(path)
    data = path.read_bytes()[offset:]
    syntax = str(meta.TransferSyntaxUID)
    if syntax == DeflatedExplicitVRLittleEndian:
        data = zlib.decompress(data, -zlib.MAX_WBITS)  # compare content, not one deflater's output
    return syntax, data


def dcmtk_encoding(corpus_file: CorpusFile, syntax: str, directory: Path) -> bytes:
    """How DCMTK encodes the file's data set in `syntax`: what storescu puts on the wire."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / corpus_file.name.replace("/", "_")
    option = "+t=" if syntax == corpus_file.transfer_syntax_uid else _DCMCONV_SYNTAX[UID(syntax)]
    result = dicom_tools.run_tool("dcmconv", ["-q", "-F", "-p", option, str(corpus_file.path), str(target)])
    assert result.returncode == 0, result.stderr
    data = target.read_bytes()
    return zlib.decompress(data, -zlib.MAX_WBITS) if syntax == DeflatedExplicitVRLittleEndian else data


def assert_stored_as_sent(
    scu: str, corpus_file: CorpusFile, row: Instance, node: Node, tmp_path: Path
) -> None:
    stored_path = node.blobs.path_of(row.blob_key)
    stored_syntax, stored = _dataset_bytes(stored_path)
    assert row.sop_class_uid == corpus_file.sop_class_uid, corpus_file.name
    assert row.transfer_syntax_uid == stored_syntax, corpus_file.name
    original_syntax = corpus_file.transfer_syntax_uid
    if scu == "pynetdicom":
        assert stored_syntax == original_syntax, corpus_file.name
        assert stored_path.read_bytes()[split_dataset(stored_path)[1] :] == corpus_file.dataset_bytes(), (
            f"{corpus_file.name}: stored bytes differ from the sent data set"
        )
        return
    if stored_syntax == original_syntax == DeflatedExplicitVRLittleEndian:
        raw_equal = stored == zlib.decompress(corpus_file.dataset_bytes(), -zlib.MAX_WBITS)
    else:
        raw_equal = stored_syntax == original_syntax and stored == corpus_file.dataset_bytes()
    if not raw_equal:  # storescu re-encoded it: compare with DCMTK's encoding
        assert stored == dcmtk_encoding(corpus_file, stored_syntax, tmp_path / "dcmconv"), (
            f"{corpus_file.name}: stored bytes differ from what storescu sent"
        )
    assert_same_dataset(
        dcmread(corpus_file.path),
        dcmread(stored_path),
        sent_le=UID(original_syntax).is_little_endian,
        stored_le=UID(stored_syntax).is_little_endian,
        where=f"{corpus_file.name}: ",
    )


# -- nodes ------------------------------------------------------------------------------------------


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a path's data set bytes as they are in the file, not decoded and re-encoded."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


NodeFactory = Callable[[int], tuple[Node, ScpServer]]


@pytest.fixture
def fresh_nodes(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path, sqlite_template: Path
) -> Iterator[NodeFactory]:
    """A node with its own empty database (of the `database_url` kind) and data dir for each round."""
    started: list[tuple[Node, ScpServer]] = []
    created: list[str] = []
    cluster: PostgresCluster | None = None
    if not database_url.startswith("sqlite"):
        cluster = request.getfixturevalue("postgres_cluster")

    def start(round_index: int) -> tuple[Node, ScpServer]:
        base = tmp_path / f"round{round_index}"
        base.mkdir()
        if cluster is None:
            shutil.copyfile(sqlite_template, base / "dicom-node.db")
            url = f"sqlite:///{base / 'dicom-node.db'}"
        else:
            name = cluster.create_database(template=TEMPLATE_DB)
            created.append(name)
            url = cluster.url(name)
        settings = make_settings(base / "var", url)
        node = build_node(settings, clock=ManualClock())
        configure_libraries(node.blobs.tmp_dir)  # spool into this node's data dir
        server = start_scp(node, scp_config(settings))
        started.append((node, server))
        return node, server

    yield start
    stoppers = [threading.Thread(target=server.stop, args=(0,)) for _, server in started]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    for node, _ in started:
        node.engine.dispose()
    if cluster is not None:
        for name in created:
            cluster.drop_database(name)


# -- the tests --------------------------------------------------------------------------------------


def _rejections(node: Node) -> list[tuple[Rejection, list[ValidationResult]]]:
    with node.sessions() as session:
        return [
            (
                rejection,
                list(
                    session.scalars(
                        select(ValidationResult).where(ValidationResult.rejection_id == rejection.id)
                    )
                ),
            )
            for rejection in session.scalars(select(Rejection))
        ]


def check_round(
    scu: str, files: Sequence[CorpusFile], node: Node, server: ScpServer, tmp_path: Path
) -> list[str]:
    """Send one round and check every file's outcome; the problems found, one line each."""
    if scu == "pynetdicom":
        answers = send_with_pynetdicom(server.port, files, tmp_path / "send")
    else:
        answers = send_with_storescu(server.port, files)
    with node.sessions() as session:
        instances = {row.original_sop_instance_uid: row for row in session.scalars(select(Instance))}

    problems: list[str] = []
    refused: dict[str, CorpusFile] = {}
    for corpus_file in files:
        answer = answers.get(corpus_file.name)
        expected = corpus_file.expected_code
        if answer is None:
            if scu == "storescu" and corpus_file.name in STORESCU_UNREADABLE:
                if corpus_file.sop_instance_uid in instances:
                    problems.append(f"{corpus_file.name}: not sent, yet stored")
            else:
                problems.append(f"{corpus_file.name}: no C-STORE response (association aborted?)")
        elif expected is None:
            if answer.status != Status.SUCCESS:
                problems.append(f"{corpus_file.name}: refused {answer.status:#06x} {answer.error_comment}")
            elif corpus_file.sop_instance_uid not in instances:
                problems.append(f"{corpus_file.name}: Success but no Instance row")
            else:
                try:
                    assert_stored_as_sent(
                        scu, corpus_file, instances[corpus_file.sop_instance_uid], node, tmp_path
                    )
                except AssertionError as error:
                    problems.append(str(error).splitlines()[0])
        else:
            refused[corpus_file.sop_instance_uid] = corpus_file
            want = CODE_STATUS[expected]
            if (answer.status, answer.error_comment) != (int(want), expected):
                problems.append(
                    f"{corpus_file.name}: expected {int(want):#06x} {expected}, "
                    f"got {answer.status:#06x} {answer.error_comment}"
                )
            if corpus_file.sop_instance_uid in instances:
                problems.append(f"{corpus_file.name}: rejected but stored")

    # Each refused file: one rejection row (status, codes), its validation result, its bytes quarantined.
    recorded: dict[str, Rejection] = {}
    for rejection, results in _rejections(node):
        if rejection.quarantine_key is None or not rejection.quarantine_key.startswith("quarantine/"):
            problems.append(
                f"rejection {rejection.codes}: bytes not quarantined ({rejection.quarantine_key})"
            )
            continue
        quarantined = node.blobs.path_of(rejection.quarantine_key)
        meta, offset = split_dataset(quarantined)
        uid = str(meta.MediaStorageSOPInstanceUID)
        corpus_file = refused.get(uid)
        if corpus_file is None or uid in recorded:
            problems.append(f"unexpected rejection row {rejection.codes} for {uid}")
            continue
        recorded[uid] = rejection
        name, expected = corpus_file.name, corpus_file.expected_code
        assert expected is not None
        if primary_code(rejection.codes.split(",")) != expected or rejection.status != CODE_STATUS[expected]:
            problems.append(f"{name}: rejection row says {rejection.status:#06x} {rejection.codes}")
        if rejection.calling_ae_title != SCU_AE[scu] or rejection.sop_class_uid != corpus_file.sop_class_uid:
            problems.append(
                f"{name}: rejection row names {rejection.calling_ae_title} {rejection.sop_class_uid}"
            )
        if [(r.passed, r.codes) for r in results] != [(False, rejection.codes)]:
            problems.append(f"{name}: validation results {[(r.passed, r.codes) for r in results]}")
        if scu == "pynetdicom" and quarantined.read_bytes()[offset:] != corpus_file.dataset_bytes():
            problems.append(f"{name}: quarantined bytes differ from the sent data set")
    problems.extend(f"{f.name}: no rejection row" for uid, f in refused.items() if uid not in recorded)
    return problems


def test_corpus_is_large_and_split_into_rounds_without_repeats() -> None:
    files = corpus()
    assert len(files) >= 200
    assert len({f.sop_class_uid for f in files}) >= 10
    assert len({f.transfer_syntax_uid for f in files}) >= 10
    assert set(EXPECTED_REJECTIONS) <= {f.name for f in files}
    assert sorted(f.name for r in ROUNDS for f in r) == sorted(f.name for f in files)
    for round_files in ROUNDS:
        assert len({f.sop_instance_uid for f in round_files}) == len(round_files)
    assert sorted(i for group in ROUND_GROUPS.values() for i in group) == list(range(len(ROUNDS)))


@pytest.mark.parametrize("group", list(ROUND_GROUPS))
@pytest.mark.parametrize("scu", ["storescu", "pynetdicom"])
def test_corpus_is_stored_as_sent_or_precisely_refused(
    scu: str, group: str, fresh_nodes: NodeFactory, tmp_path: Path, chunked_send: None
) -> None:
    problems: list[str] = []
    for round_index in ROUND_GROUPS[group]:
        node, server = fresh_nodes(round_index)
        found = check_round(scu, ROUNDS[round_index], node, server, tmp_path / f"work{round_index}")
        problems.extend(f"round {round_index}: {line}" for line in found)
        # The node still serves after whatever the round held.
        assert dicom_tools.echoscu(server.port).returncode == 0
    assert not problems, "\n".join(problems)
