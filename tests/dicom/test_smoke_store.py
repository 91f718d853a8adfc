from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from dicom_node.net.scp import ScpServer
from dicom_node.services.node import Node
from storage.models import Instance
from tests.harness import datasets, dicom_tools


def test_storescu_instance_is_stored_and_echo_answers(scp: ScpServer, node: Node, tmp_path: Path) -> None:
    path = datasets.write(datasets.make_ct(), tmp_path / "in" / "ct.dcm")
    result = dicom_tools.storescu(scp.port, [path])
    assert result.returncode == 0, result.stderr
    with node.sessions() as session:
        stored = session.scalars(select(Instance)).all()
    assert len(stored) == 1
    assert dicom_tools.echoscu(scp.port).returncode == 0
