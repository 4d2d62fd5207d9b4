"""Shared fixtures for node tests: a recording SCP sink, Orthanc, and an in-process node factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import NodeConfig
from dicomnode.node import Node
from tests.node_helpers import Orthanc, RecordingSCP, node_config
from tests.shared_data import SHARED


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture
def recording_scp() -> Iterator[RecordingSCP]:
    """A pynetdicom storage SCP accepting everything; `.received` holds raw bytes as sent."""
    scp = RecordingSCP().start()
    try:
        yield scp
    finally:
        scp.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 (run pytest inside `unshare -n`, as `make test` does)."""
    server = Orthanc(tmp_path / "orthanc")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """start_node(destinations, **sections) -> a started in-process Node; stopped at teardown."""
    started: list[Node] = []

    def start(destinations: list[dict], config: NodeConfig | None = None, **sections: Any) -> Node:
        node = Node(config or node_config(tmp_path, destinations, **sections))
        started.append(node.start())
        return node

    try:
        yield start
    finally:
        for node in reversed(started):
            node.stop()
