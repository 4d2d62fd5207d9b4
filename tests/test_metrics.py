"""The Prometheus endpoint: real HTTP scrape on loopback, parsed with prometheus-client's parser."""

from __future__ import annotations

import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.metrics import MetricsServer, NodeMetrics
from tests.node_helpers import DISCARD_UNMATCHED


def _scrape(server: MetricsServer) -> dict[tuple[str, tuple], float]:
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def serve():
    servers: list[MetricsServer] = []

    def start(metrics: NodeMetrics) -> MetricsServer:
        server = MetricsServer(metrics, port=0)  # default host: loopback
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def test_counters_histograms_and_gauges_are_served(serve, tmp_path):
    depths = {"pacs": 3, "archive": 0}
    metrics = NodeMetrics(queue_depth=lambda: depths, disk_paths={"spool": tmp_path})
    server = serve(metrics)
    assert server.address[0] == "127.0.0.1"

    for _ in range(5):
        metrics.image_received()
    metrics.image_classified("AP", 0.004)
    metrics.image_classified("AP", 0.03)
    metrics.image_classified("LA", 0.004)
    metrics.image_unreadable()
    metrics.image_forwarded("pacs", 0.3)
    metrics.image_forwarded("pacs", 12.0)
    metrics.forward_failed("archive")

    samples = _scrape(server)
    assert samples[("dicomnode_images_received_total", ())] == 5
    assert samples[("dicomnode_images_classified_total", (("label", "AP"),))] == 2
    assert samples[("dicomnode_images_classified_total", (("label", "LA"),))] == 1
    assert samples[("dicomnode_images_unreadable_total", ())] == 1
    assert samples[("dicomnode_images_forwarded_total", (("destination", "pacs"),))] == 2
    assert samples[("dicomnode_images_failed_total", (("destination", "archive"),))] == 1
    assert samples[("dicomnode_inference_seconds_count", ())] == 3
    assert samples[("dicomnode_inference_seconds_bucket", (("le", "0.005"),))] == 2
    assert samples[("dicomnode_inference_seconds_sum", ())] == pytest.approx(0.038)
    e2e = (("destination", "pacs"), ("le", "0.5"))
    assert samples[("dicomnode_end_to_end_seconds_bucket", e2e)] == 1
    assert samples[("dicomnode_queue_depth", (("destination", "pacs"),))] == 3
    assert samples[("dicomnode_queue_depth", (("destination", "archive"),))] == 0
    free = samples[("dicomnode_disk_free_bytes", (("path", "spool"),))]
    assert abs(free - shutil.disk_usage(tmp_path).free) < 256 * 1024 * 1024

    depths["pacs"] = 0  # read at scrape time, not at start
    assert _scrape(server)[("dicomnode_queue_depth", (("destination", "pacs"),))] == 0


def test_a_failing_source_does_not_break_the_scrape(serve, tmp_path):
    def broken():
        raise RuntimeError("spool vanished")

    metrics = NodeMetrics(queue_depth=broken, disk_paths={"gone": tmp_path / "missing"})
    metrics.image_received()
    samples = _scrape(serve(metrics))
    assert samples[("dicomnode_images_received_total", ())] == 1
    assert not any(name == "dicomnode_queue_depth" for name, _ in samples)
    assert not any(name == "dicomnode_disk_free_bytes" for name, _ in samples)


def test_two_nodes_in_one_process_keep_separate_counts(serve):
    first, second = NodeMetrics(), NodeMetrics()
    first.image_received()
    assert _scrape(serve(first))[("dicomnode_images_received_total", ())] == 1
    assert _scrape(serve(second))[("dicomnode_images_received_total", ())] == 0


def test_stopped_server_releases_its_port():
    server = MetricsServer(NodeMetrics(), port=0)
    _, port = server.start()
    server.stop()
    rebound = MetricsServer(NodeMetrics(), port=port)
    rebound.start()
    rebound.stop()


# --- dicomnode health ----------------------------------------------------------------------------


@pytest.fixture
def echo_scp():
    """A real C-ECHO SCP on loopback standing in for the node's listener."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="DICOMNODE")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def _config(tmp_path, port: int, db_url: str | None = None):
    from dicomnode.config_file import parse_config

    url = db_url or f"sqlite:///{tmp_path / 'log.sqlite3'}"
    return parse_config(
        f"receive: {{ae_title: DICOMNODE, host: 127.0.0.1, port: {port}}}\n"
        f"spool: {{path: {tmp_path / 'spool'}}}\n"
        f"log: {{url: '{url}'}}\n"
    )


def test_health_ok_names_echo_disk_spool_and_log(tmp_path, echo_scp):
    from dicomnode.health import check_health
    from dicomnode.logdb.store import LogStore
    from dicomnode.spool import Spool

    config = _config(tmp_path, echo_scp)
    LogStore.open(config.log.url).close()
    spool = Spool(config.spool.path)
    spool.ensure(["pacs"])
    (spool.dir("outgoing", "pacs") / "x.dcm").write_bytes(b"queued")
    report = check_health(config, timeout=5)
    assert report.ok, report.line
    assert report.line.startswith("OK echo DICOMNODE@127.0.0.1:")
    assert "log sqlite ok" in report.line
    assert "queued: pacs 1" in report.line
    assert "GiB free" in report.line


def test_health_fails_when_the_node_is_not_listening(tmp_path):
    import socket

    from dicomnode.health import check_health

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    report = check_health(_config(tmp_path, free_port), timeout=3)
    assert not report.ok
    assert report.line.startswith("FAIL echo DICOMNODE@127.0.0.1:")
    assert "log" in report.line and "missing" in report.line  # no database yet either


def test_health_fails_below_the_free_space_floor(tmp_path, echo_scp):
    from dicomnode.health import check_health
    from dicomnode.logdb.store import LogStore

    config = _config(tmp_path, echo_scp)
    LogStore.open(config.log.url).close()
    report = check_health(config, timeout=5, min_free_bytes=shutil.disk_usage(tmp_path).total)
    assert not report.ok and "GiB free (<" in report.line


# --- on the node ---------------------------------------------------------------------------------


def test_node_serves_its_metrics_on_loopback_when_enabled(start_node, recording_scp, shared):
    from tests.node_helpers import send_files
    from tests.shared_data import CORPUS_DIR

    node = start_node(
        [recording_scp.destination("sink")],
        metrics={"enabled": True, "port": 0},
        classify={"modalities": []},
    )
    assert node.metrics_server is not None and node.metrics_server.address[0] == "127.0.0.1"
    files = [CORPUS_DIR / "files" / "CT__CT_small.dcm", CORPUS_DIR / "files" / "MR__MR_small.dcm"]
    assert send_files(node.port, *files) == [0, 0]
    recording_scp.wait_for(2)
    assert node.wait_idle(30)
    samples = _scrape(node.metrics_server)
    assert samples[("dicomnode_images_received_total", ())] == 2
    assert samples[("dicomnode_images_forwarded_total", (("destination", "sink"),))] == 2
    assert samples[("dicomnode_end_to_end_seconds_count", (("destination", "sink"),))] == 2
    assert samples[("dicomnode_queue_depth", (("destination", "sink"),))] == 0
    assert samples[("dicomnode_disk_free_bytes", (("path", "spool"),))] > 0


def test_metrics_are_off_by_default(start_node):
    node = start_node([], routing=DISCARD_UNMATCHED, classify={"modalities": []})
    assert node.config.metrics.enabled is False and node.metrics_server is None
