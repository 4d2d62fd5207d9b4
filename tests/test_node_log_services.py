"""The node starts the auditor web view and log retention from its config, and stops them."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, text

from tests.node_helpers import as_cr_image, storescu
from tests.shared_data import CHEST_PA


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_node_serves_the_auditor_view_and_purges_by_retention(start_node, tmp_path: Path):
    web_port = free_port()
    node = start_node(
        [{"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")}],
        web={"enabled": True, "port": web_port},
        log={"retention_days": 30},
    )
    chest_cr = as_cr_image(CHEST_PA, tmp_path / "chest-cr.dcm")
    assert storescu(node.port, chest_cr, options=("-xy",)).returncode == 0  # JPEG baseline
    assert node.wait_idle(60)

    study_uid = str(pydicom.dcmread(CHEST_PA, stop_before_pixels=True).StudyInstanceUID)
    url = f"http://127.0.0.1:{web_port}/study/{study_uid}"
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    assert response.status == 200
    assert study_uid in page and "agrees" in page  # the decision the node just logged

    engine = create_engine(f"sqlite:///{tmp_path / 'log.sqlite3'}")
    with engine.connect() as connection:
        purges = connection.execute(text("SELECT COUNT(*) FROM purges")).scalar_one()
        instances = connection.execute(text("SELECT COUNT(*) FROM instances")).scalar_one()
    engine.dispose()
    assert purges >= 1  # retention ran at start-up and recorded its purge
    assert instances == 1  # a fresh row is well inside 30 days

    node.stop()
    with pytest.raises(ConnectionRefusedError):  # the view stops with the node
        socket.create_connection(("127.0.0.1", web_port), timeout=5).close()
