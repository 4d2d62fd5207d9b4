"""The Prometheus endpoint: real HTTP scrape on loopback, parsed with prometheus-client's parser."""

from __future__ import annotations

import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.metrics import MetricsServer, NodeMetrics


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
