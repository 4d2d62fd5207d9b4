"""The command line: --help everywhere, `classify` JSON lines, `echo`, and `serve` as a real process
(the README's first command on a temporary config) stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from tests.node_helpers import PEER_ENV, free_port, storescu
from tests.shared_data import CHEST_PA, XRAY_VIEWS
from tests.test_node_classify import shipped_model_sha256

runner = CliRunner()
LATERAL_JPEG = XRAY_VIEWS / "circ-ml-CXR-View" / "lateral" / "F.jpg"


@pytest.mark.parametrize("command", [[], ["serve"], ["classify"], ["echo"]])
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_classify_prints_one_json_line_per_file(shared, tmp_path: Path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not a radiograph")
    result = runner.invoke(app, ["classify", str(CHEST_PA), str(LATERAL_JPEG), str(not_an_image)])
    assert result.exit_code == 1  # one file failed, and says why
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["path"] for line in lines] == [str(CHEST_PA), str(LATERAL_JPEG), str(not_an_image)]
    frontal, lateral, bad = lines
    assert frontal["label"] in ("AP", "PA") and lateral["label"] == "LAT"
    assert frontal["would_write"] != "AP"  # a PA chest: PA or nothing, never AP
    assert lateral["would_write"] == "LL" and lateral["view"] == "LL"
    for line in (frontal, lateral):
        assert set(line) == {"path", "label", "view", "probabilities", "heads", "confidence",
                             "would_write", "reason", "thresholds", "node", "model_sha256", "ms"}
        assert set(line["probabilities"]) == {"AP", "PA", "LAT", "OTHER"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert line["model_sha256"] == shipped_model_sha256()
        assert (line["would_write"] is None) == (line["reason"] is not None)
    # The reference PA chest already says PA: serve leaves it (agrees) or flags it, never writes.
    assert frontal["node"]["before"] == "PA" and frontal["node"]["after"] == "PA"
    assert "error" in bad


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    config = tmp_path / "node.yaml"
    config.write_text(
        "receive:\n"
        "  ae_title: DICOMNODE\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "spool:\n"
        f"  path: {tmp_path / 'spool'}\n" + extra
    )
    return config


def test_config_error_names_line_and_exits_2(tmp_path: Path):
    config = write_config(tmp_path, 11112, "tag:\n  on_disagree: ignore\n")
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:8: tag.on_disagree" in result.output and "'overwrite'" in result.output


def test_serve_process_echo_store_and_sigterm(tmp_path: Path, shared):
    port = free_port()
    config = write_config(tmp_path, port)
    outbox, db = tmp_path / "outbox", tmp_path / "log.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "serve", "--config", str(config),
         "--outbox", str(outbox), "--db", f"sqlite:///{db}"],
        cwd=tmp_path, env={**PEER_ENV, "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            echo = runner.invoke(app, ["echo", "--config", str(config)])
            if echo.exit_code == 0:
                break
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
        assert echo.exit_code == 0 and "success" in echo.output
        assert storescu(port, CHEST_PA, options=("-R", "-xy")).returncode == 0
        out_file = outbox / f"{_uid(CHEST_PA)}.dcm"
        deadline = time.monotonic() + 30
        while not out_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out_file.exists()
        assert db.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"DICOMNODE listening on 127.0.0.1:{port}" in output
    assert not os.listdir(tmp_path / "spool" / "incoming")


def test_echo_reports_unreachable_destination(tmp_path: Path):
    config = write_config(tmp_path, free_port())
    result = runner.invoke(app, ["echo", "--config", str(config), "--timeout", "2"])
    assert result.exit_code == 1 and "association failed" in result.output


def _uid(path: Path) -> str:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


def test_echo_a_named_destination(tmp_path: Path, recording_scp):
    sink = recording_scp.destination()
    config = write_config(
        tmp_path,
        free_port(),
        "destinations:\n"
        f"  - {{name: pacs, type: dicom, ae_title: {sink['ae_title']}, host: 127.0.0.1, "
        f"port: {sink['port']}}}\n",
    )
    result = runner.invoke(app, ["echo", "pacs", "--config", str(config)])
    assert (
        result.exit_code == 0 and f"C-ECHO SINK@127.0.0.1:{sink['port']}: success" in result.output
    )
    result = runner.invoke(app, ["echo", "nowhere", "--config", str(config)])
    assert result.exit_code == 2 and "known: ['pacs']" in result.output
