"""Prometheus metrics: counters and histograms the stages update, served as text on their own port.

Off by default; when on it binds 127.0.0.1 unless the config says otherwise (Prometheus or a
node_exporter on the same box scrapes it; expose it further only behind a proxy you control).
Each NodeMetrics owns its own CollectorRegistry, so several nodes (or tests) in one process do
not collide in prometheus-client's global registry.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomnode.addresses import is_loopback
from dicomnode.logdb.entry import discard_rule

LOGGER = logging.getLogger(__name__)

# Inference on a Jetson CPU runs ~5-50 ms, on a server ~2-10 ms; first-image warm-up up to seconds.
INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Received -> forwarded includes decode, queueing and the destination's own C-STORE time.
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class _CallbackGauges(Collector):
    """Gauges read at scrape time: queue depth per destination and free disk per path."""

    def __init__(
        self,
        queue_depth: Callable[[], Mapping[str, int]] | None,
        disk_paths: Mapping[str, Path],
    ) -> None:
        self.queue_depth = queue_depth
        self.disk_paths = dict(disk_paths)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "dicomnode_queue_depth",
            "Instances waiting to be sent, per destination",
            labels=["destination"],
        )
        if self.queue_depth is not None:
            try:
                depths = self.queue_depth()
            except Exception:  # a scrape must not fail because one source did
                LOGGER.exception("queue depth callback failed")
                depths = {}
            for destination, depth in sorted(depths.items()):
                queue.add_metric([destination], float(depth))
        yield queue
        free = GaugeMetricFamily(
            "dicomnode_disk_free_bytes",
            "Free bytes on the file system holding each node path",
            labels=["path"],
        )
        for name, path in sorted(self.disk_paths.items()):
            try:
                free.add_metric([name], float(shutil.disk_usage(path).free))
            except OSError:
                continue  # path not created yet; absent beats a misleading zero
        yield free


class NodeMetrics:
    """What the stages report. Methods are cheap and thread-safe (prometheus-client locks)."""

    def __init__(
        self,
        queue_depth: Callable[[], Mapping[str, int]] | None = None,
        disk_paths: Mapping[str, Path] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "dicomnode_images_received", "Instances received by C-STORE", registry=self.registry
        )
        self.classified = Counter(
            "dicomnode_images_classified",
            "Instances classified, by predicted view",
            ["label"],
            registry=self.registry,
        )
        self.unreadable = Counter(
            "dicomnode_images_unreadable",
            "Instances whose pixels could not be classified (forwarded untouched)",
            registry=self.registry,
        )
        self.forwarded = Counter(
            "dicomnode_images_forwarded",
            "Instances delivered, per destination",
            ["destination"],
            registry=self.registry,
        )
        self.failed = Counter(
            "dicomnode_images_failed",
            "Failed delivery attempts, per destination",
            ["destination"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "dicomnode_inference_seconds",
            "Model inference time per image",
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end_seconds = Histogram(
            "dicomnode_end_to_end_seconds",
            "Time from receipt to delivery, per destination",
            ["destination"],
            buckets=END_TO_END_BUCKETS,
            registry=self.registry,
        )
        self.refused = Counter(
            "dicomnode_images_refused",
            "C-STOREs refused before anything was written, by reason (disk_low: free-space floor; "
            "uid_mismatch: dataset UIDs not the request's; wrong_context: on another class's "
            "presentation context)",
            ["reason"],
            registry=self.registry,
        )
        self.discarded = Counter(
            "dicomnode_images_discarded",
            "Instances routed nowhere by a discard rule, by rule ((default): the default rule)",
            ["rule"],
            registry=self.registry,
        )
        self.associations = Counter(
            "dicomnode_associations",
            "Associations, by outcome (accepted, rejected; aborted: accepted, then aborted)",
            ["outcome"],
            registry=self.registry,
        )
        self.connections_cut = Counter(
            "dicomnode_connections_cut",
            "Connections the node closed for what they sent or did not send, by reason (deadline, "
            "oversize, unknown_pdu, unexpected_pdu, malformed_pdu, bad_ae_title, bad_context_id, "
            "too_many_pending, no_room: the spool had no room (or no tmp/) for the transfer, "
            "closed_before_request: closed by its peer before the accept loop reached it, "
            "tls_handshake: a TLS handshake that failed)",
            ["reason"],
            registry=self.registry,
        )
        self.spool_purged = Counter(
            "dicomnode_spool_purged",
            "sent/ copies purged by spool retention, by reason (age, size, disk; stale_tmp: "
            "files of aborted transfers left in tmp/)",
            ["reason"],
            registry=self.registry,
        )
        self.log_pending = Gauge(
            "dicomnode_log_pending",
            "Decisions and delivery attempts journaled in the spool, not yet in the log database",
            registry=self.registry,
        )
        self.log_database_up = Gauge(
            "dicomnode_log_database_up",
            "1 while the log database takes writes, 0 during an outage (events are journaled)",
            registry=self.registry,
        )
        self.log_database_up.set(1)
        self.disk_low = Gauge(
            "dicomnode_disk_low",
            "1 while the spool's free space is below the configured floor (images refused)",
            registry=self.registry,
        )
        self._gauges = _CallbackGauges(queue_depth, disk_paths or {})
        self.registry.register(self._gauges)

    def log_journal_changed(self, pending: int, database_up: bool) -> None:
        self.log_pending.set(pending)
        self.log_database_up.set(1 if database_up else 0)

    def set_queue_depth_source(self, source: Callable[[], Mapping[str, int]]) -> None:
        self._gauges.queue_depth = source

    def add_disk_path(self, name: str, path: Path) -> None:
        self._gauges.disk_paths[name] = Path(path)

    # --- what the stages call ---

    def image_received(self) -> None:
        self.received.inc()

    def image_classified(self, label: str, inference_seconds: float | None) -> None:
        self.classified.labels(label=label).inc()
        if inference_seconds is not None:
            self.inference_seconds.observe(inference_seconds)

    def image_unreadable(self) -> None:
        self.unreadable.inc()

    def image_forwarded(self, destination: str, end_to_end_seconds: float | None) -> None:
        self.forwarded.labels(destination=destination).inc()
        if end_to_end_seconds is not None:
            self.end_to_end_seconds.labels(destination=destination).observe(end_to_end_seconds)

    def forward_failed(self, destination: str) -> None:
        self.failed.labels(destination=destination).inc()

    def image_processed(self, entry: Any) -> None:
        """Pipeline hook: one InstanceLogEntry after classify/tag and routing."""
        rule = discard_rule(entry.routing)
        if rule is not None:
            self.discarded.labels(rule=rule).inc()
        if entry.action == "unreadable":
            self.image_unreadable()
        elif entry.label:
            inference_ms = entry.inference_ms
            self.image_classified(entry.label, inference_ms / 1000 if inference_ms else None)

    def on_delivered(self, destination: str, meta: Mapping[str, Any], delivery: Any) -> None:
        """Forwarder hook (on_delivered): final outcome of one image at one destination."""
        if delivery.outcome == "sent":
            self.image_forwarded(destination, _seconds_since(meta.get("received_at")))
        else:
            self.forward_failed(destination)

    def connection_cut(self, reason: str) -> None:
        self.connections_cut.labels(reason=reason).inc()

    def image_refused(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()

    def set_disk_low(self, low: int) -> None:
        self.disk_low.set(low)


class MetricsServer:
    """The /metrics HTTP endpoint (prometheus-client's WSGI server in a daemon thread)."""

    def __init__(self, metrics: NodeMetrics, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        if not is_loopback(self.host):
            LOGGER.warning(
                "metrics endpoint bound to %s: reachable beyond this machine, without auth",
                self.host,
            )
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.metrics.registry
            )
        except OSError as exc:  # name the listener: the node has several
            raise OSError(f"metrics listener (metrics.host/port) cannot bind {self.host}:"
                          f"{self.port}: {exc.strerror or exc}") from None
        host, port = self._server.server_address[:2]
        LOGGER.info("metrics on http://%s:%d/metrics", host, port)
        return host, port

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "metrics server not started"
        return self._server.server_address[:2]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _seconds_since(received_at: Any) -> float | None:
    try:
        start = datetime.fromisoformat(str(received_at))
    except (TypeError, ValueError):
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - start).total_seconds())


def attach_to_node(node: Any) -> MetricsServer | None:
    """Point node.metrics at the node's parts (queue depth, disk, receive, forward hooks) and
    serve it when `metrics.enabled`. Called at the end of Node.start; returns the server."""
    from dicomnode.logdb.store import normalise_url, sqlite_file
    from dicomnode.spool import OUTGOING

    metrics: NodeMetrics = node.metrics
    metrics.set_queue_depth_source(
        lambda: {name: len(node.spool.names(OUTGOING, name)) for name in node.forwarders}
    )
    metrics.add_disk_path("spool", node.spool.root)
    database = sqlite_file(normalise_url(node.config.log.url))
    if database is not None:
        metrics.add_disk_path("log", database.parent)
    for forwarder in node.forwarders.values():
        forwarder.on_delivered = metrics.on_delivered
    if node.pipeline is not None:
        node.pipeline.metrics = metrics
    if node.receiver is not None:
        spooled = node.receiver.on_spooled

        def count_then_queue(path: Path, sop_class_uid: str) -> None:
            metrics.image_received()
            spooled(path, sop_class_uid)

        node.receiver.on_spooled = count_then_queue
    settings = node.config.metrics
    if not settings.enabled:
        return None
    server = MetricsServer(metrics, settings.host, settings.port)
    server.start()
    return server
