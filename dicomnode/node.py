"""The node: wires receive -> spool -> pipeline (classify, tag, log, route) -> forwarders, and owns
their lifecycle. Start-up order makes the first image cost what the hundredth does: log database,
classifiers (loaded and warmed), spool resume, forwarders, and only then the listening socket.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dicomnode.classify import DEFAULT_MODELS_DIR, ModelError, ViewClassifier, load_manifest
from dicomnode.config import ConfigError, NodeConfig
from dicomnode.config_file import delivery_gap
from dicomnode.diskguard import DiskGuard
from dicomnode.forward import Forwarder
from dicomnode.log_journal import LogJournal
from dicomnode.metrics import MetricsServer, NodeMetrics, attach_to_node
from dicomnode.pipeline import Pipeline
from dicomnode.receive import AssociationEvent, Receiver
from dicomnode.spool import JOURNAL, OUTGOING, RESTART_NEEDED, TMP, Spool
from dicomnode.spool_retention import SpoolRetention

log = logging.getLogger(__name__)


def open_log_store(url: str) -> Any:
    from dicomnode.logdb.store import LogStore

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return LogStore.open(url)


class Node:
    def __init__(self, config: NodeConfig, log_store: Any = None) -> None:
        self.config = config
        self.spool = Spool(config.spool.path)
        self._own_store = log_store is None
        self.log_store = log_store
        self.forwarders: dict[str, Forwarder] = {}
        self.pipeline: Pipeline | None = None
        self.receiver: Receiver | None = None
        self.metrics = NodeMetrics()  # counted always; served only when metrics.enabled
        self.metrics_server: MetricsServer | None = None
        self.spool_retention: SpoolRetention | None = None
        self.journal: LogJournal | None = None
        self.inbox: Any = None  # dicomnode.watch.InboxWatcher when config.inbox.path is set
        self.web: Any = None  # dicomnode.web.server.WebServer when web.enabled
        self.retention: Any = None  # dicomnode.logdb.retention.RetentionWorker when configured

    def _classifier(self) -> ViewClassifier:
        models_dir = self.config.classify.models_dir or DEFAULT_MODELS_DIR
        return ViewClassifier.from_manifest(
            Path(models_dir),
            self.config.classify.variant,
            num_threads=self.config.classify.threads_per_worker,
        )

    def start(self) -> Node:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        gap = delivery_gap(self.config)
        if gap is not None:  # before a port opens: nothing may be acknowledged into nowhere
            raise ConfigError(f"refusing to start: {gap}")
        self.spool.lock()  # before ensure(), which clears tmp/: that may be another node's
        (self.spool.root / RESTART_NEEDED).unlink(missing_ok=True)  # this start is the restart
        names = [d.name for d in self.config.destinations]
        self.spool.ensure(names)
        if self.log_store is None:
            self.log_store = open_log_store(self.config.log.url)
        self.journal = LogJournal(
            self.log_store, self.spool.dir(JOURNAL), self.spool.dir(TMP),
            on_change=self.metrics.log_journal_changed,
        ).start()  # fmt: skip
        for dest in self.config.destinations:
            self.forwarders[dest.name] = Forwarder(
                dest, self.spool, self.journal, self.config.receive.ae_title
            )
        self.pipeline = Pipeline(
            self.config,
            self.spool,
            self.journal,
            on_dispatched=self._wake_forwarders,
            classifier_factory=self._classifier,
        )
        self.pipeline.start()  # loads + warms the model before the port opens
        self._register_model()
        for forwarder in self.forwarders.values():
            forwarder.start()
        self.receiver = Receiver(
            self.config.receive, self.spool, self.pipeline.submit, disk_guard=self._disk_guard(),
            on_association=self._association_answered, metrics=self.metrics,
        )
        self.receiver.start()
        if self.config.inbox.path is not None:  # drop folder: files processed like received ones
            from dicomnode.watch import InboxWatcher

            self.inbox = InboxWatcher(
                self.config.inbox.path, self.spool, self.pipeline.submit,
                self.config.inbox.settle_s,
            ).start()  # fmt: skip
        self.metrics_server = attach_to_node(self)
        self.spool_retention = SpoolRetention(
            self.spool, lambda: self.config,
            on_purged=lambda reason, n: self.metrics.spool_purged.labels(reason).inc(n),
        ).start()  # fmt: skip
        self._start_log_services()
        host, port = self.receiver.address
        # Only now, with every listener bound and every worker up: "listening" means it.
        log.info("listening as %s on %s:%d", self.config.receive.ae_title, host, port)

    def _association_answered(self, event: AssociationEvent) -> None:
        """Accepted and rejected associations: counted, and in the audit log."""
        self.metrics.associations.labels(event.outcome).inc()
        if self.journal is not None:
            self.journal.record_association(event.at, event.outcome, event.calling_ae,
                                            event.called_ae, event.peer_address, event.reason)

    def _start_log_services(self) -> None:
        """The auditor web view and log retention, each only when configured."""
        from dicomnode.logdb.retention import start_retention
        from dicomnode.web.server import start_web_from_config

        self.web = start_web_from_config(self.log_store, self.config.web, self.config.log,
                                         self.config.spool.path)
        self.retention = start_retention(self.log_store, self.config.log)

    def _disk_guard(self) -> DiskGuard:
        return DiskGuard(
            self.spool.root, self.config.disk.min_free_mb, getattr(self, "metrics", None)
        )

    def _register_model(self) -> None:
        """Record the loaded model (sha256 + manifest) in the log's model table."""
        sha256 = self.pipeline.model_sha256 if self.pipeline else None
        if sha256 is None or not hasattr(self.log_store, "register_model"):
            return
        models_dir = Path(self.config.classify.models_dir or DEFAULT_MODELS_DIR)
        try:
            manifest = load_manifest(models_dir)
        except ModelError:
            manifest = None
        self.log_store.register_model(sha256, manifest)

    @property
    def address(self) -> tuple[str, int]:
        assert self.receiver is not None, "node not started"
        return self.receiver.address

    @property
    def port(self) -> int:
        return self.address[1]

    def _wake_forwarders(self, destinations: list[str]) -> None:
        for name in destinations:
            forwarder = self.forwarders.get(name)
            if forwarder is not None:
                forwarder.wake()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once everything received has been processed and every destination drained or
        parked for retry (tests and the CLI's `--exit-when-idle` style helpers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pipeline_idle = self.pipeline is None or self.pipeline.idle()
            outgoing = any(self.spool.names(OUTGOING, n) for n in self.forwarders)
            log_idle = self.journal is None or self.journal.idle()  # rows written, or an outage
            if pipeline_idle and not outgoing and log_idle:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        # Reverse order: stop accepting, let workers finish the file in hand, then forwarders.
        for service in (self.web, self.retention, self.spool_retention):
            if service is not None:
                service.stop()
        self.web = self.retention = self.spool_retention = None
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox = None
        if self.receiver is not None:
            self.receiver.stop(self.config.receive.shutdown_grace_s)
            self.receiver = None
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        for forwarder in self.forwarders.values():
            if forwarder.is_alive():
                forwarder.stop()
        self.forwarders.clear()
        if self.journal is not None:  # after the forwarders: their last attempts go in too
            self.journal.stop()
            self.journal = None
        if self._own_store and self.log_store is not None:
            self.log_store.close()
            self.log_store = None
        self.spool.unlock()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
