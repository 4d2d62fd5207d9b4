"""Watched files (watchdog): the config file (reload) and the inbox drop folder.

Config reload: a valid change takes effect for the next image (routing, tag and classify settings,
disk floor, destinations; a changed destination's forwarder is restarted after its current send);
associations in progress are not touched, and receive: changes (port, AE title) need a restart.
An invalid file is refused: the error is logged and the old config stays.

Inbox: a file written into the folder is taken once it has not changed for `settle_s` (so a file
still being copied is never read half-written), moved into .taking/ (the claim), spooled like a
received instance (calling AE "INBOX"), and deleted. Files that are not DICOM go to .rejected/
with a .txt saying why. A crash between spooling and deleting can process a file twice (it stays
in .taking/ and is taken again on start-up); nothing is lost.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from dicomnode.config import ConfigError, NodeConfig
from dicomnode.config_file import delivery_gap
from dicomnode.identity import set_implementation
from dicomnode.spool import FAILED, OUTGOING, RESTART_NEEDED, SENT

log = logging.getLogger(__name__)

INBOX_AE = "INBOX"
CHANGE_EVENTS = {"created", "modified", "moved", "closed"}  # not "opened", "closed_no_write"


def file_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None while it cannot be read (mid-rename, removed, unreadable):
    whoever loads it says what is wrong with it."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class _Wake(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.callback(event)


class ConfigWatcher:
    """Reloads the config file on change; `apply(new_config)` does the swap."""

    def __init__(
        self,
        path: Path,
        load: Callable[[], NodeConfig],
        apply: Callable[[NodeConfig], None],
        debounce_s: float = 0.3,
        loaded: bytes | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self.loaded = loaded  # the file's bytes the running config came from, if known
        self.load = load
        self.apply = apply
        self.debounce_s = debounce_s
        self.reloads = 0
        self.refusals = 0
        self.last_error: str | None = None
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def _on_event(self, event: FileSystemEvent) -> None:
        # Only writes count: watchdog also reports opens and reads (our own reload reads it).
        if event.event_type not in CHANGE_EVENTS:
            return
        paths = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if str(self.path) in paths:
            self._pending.set()

    def start(self) -> ConfigWatcher:
        self._observer = Observer()
        # the folder, not the file: editors replace files by rename
        self._observer.schedule(_Wake(self._on_event), str(self.path.parent), recursive=False)
        self._observer.start()
        if self.loaded is not None and file_bytes(self.path) != self.loaded:
            self._pending.set()  # changed before we watched: no event will come for it
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._pending.wait(0.5):
                continue
            self._pending.clear()
            self._wait_until_stable()
            self._pending.clear()
            self.reload()

    def _wait_until_stable(self, tries: int = 20) -> None:
        """Let the writer finish: the same content twice, debounce_s apart (a file being
        rewritten in place is briefly empty or half there)."""
        previous = None
        for _ in range(tries):
            time.sleep(self.debounce_s)
            current = file_bytes(self.path)
            if current is not None and current == previous:
                return
            previous = current

    def reload(self) -> bool:
        try:
            if not self.path.read_text().strip():
                raise ConfigError(f"{self.path} is empty")  # a half-written file, most likely
            config = self.load()
        except Exception as exc:  # ConfigError, or an unreadable file: keep the old config
            self.refusals += 1
            self.last_error = str(exc)
            log.error("config reload refused, keeping the running config: %s", exc)
            return False
        try:
            self.apply(config)
        except ConfigError as exc:  # apply_config refused it: the old config stays, as it was
            self.refusals += 1
            self.last_error = str(exc)
            log.error("config reload refused, keeping the running config: %s", exc)
            return False
        except Exception as exc:
            self.refusals += 1
            self.last_error = str(exc)
            log.exception("config reload could not be applied")
            return False
        self.reloads += 1
        log.warning("config reloaded from %s", self.path)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class InboxWatcher:
    """Takes settled files from the inbox folder into the spool; `on_spooled(path)`, the SOP class
    then read from the sidecar."""

    def __init__(
        self, folder: Path, spool: Any, on_spooled: Callable[[Path], None], settle_s: float = 1.0
    ) -> None:
        self.folder = Path(folder)
        self.spool = spool
        self.on_spooled = on_spooled
        self.settle_s = settle_s
        self.taking = self.folder / ".taking"
        self.rejected = self.folder / ".rejected"
        self.taken = 0
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, since)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> InboxWatcher:
        for folder in (self.folder, self.taking, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(self.taking.iterdir()):  # a crash mid-take: take it again
            self._take_claimed(leftover)
        self._observer = Observer()
        self._observer.schedule(_Wake(lambda _e: self._wake.set()), str(self.folder))
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="inbox-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                waiting = self.scan()
            except Exception:
                log.exception("inbox scan failed")
                waiting = True
            # Poll while files settle; otherwise sleep until watchdog reports a change.
            self._wake.wait(min(self.settle_s, 0.5) if waiting else 5.0)
            self._wake.clear()

    def scan(self) -> bool:
        """Take every settled file; True while some file is still settling."""
        now = time.monotonic()
        waiting = False
        present = set()
        for path in sorted(self.folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # hidden: partial copies (rsync, our own folders)
            present.add(path.name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            seen = self._seen.get(path.name)
            if seen is None or seen[:2] != key:
                self._seen[path.name] = (*key, now)
                waiting = True
                continue
            if now - seen[2] < self.settle_s:
                waiting = True
                continue
            self._seen.pop(path.name, None)
            claimed = self.taking / path.name
            try:
                os.rename(path, claimed)  # the claim: once each
            except FileNotFoundError:
                continue
            self._take_claimed(claimed)
        for name in set(self._seen) - present:
            self._seen.pop(name, None)
        return waiting

    def _take_claimed(self, claimed: Path) -> None:
        try:
            encoded, meta = _as_part10(claimed.read_bytes())
        except Exception as exc:
            log.warning("inbox: %s is not DICOM: %s", claimed.name, exc)
            target = self.rejected / claimed.name
            os.replace(claimed, target)
            target.with_name(target.name + ".txt").write_text(f"{type(exc).__name__}: {exc}\n")
            return
        meta = {
            "received_at": datetime.now(timezone.utc).isoformat(),
            "calling_ae": INBOX_AE,
            "called_ae": INBOX_AE,
            "peer_address": "",
            "inbox_file": claimed.name,
            **meta,
        }
        spooled = self.spool.accept(encoded, meta)
        claimed.unlink(missing_ok=True)
        self.taken += 1
        with contextlib.suppress(Exception):
            self.on_spooled(spooled)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _as_part10(data: bytes) -> tuple[bytes, dict[str, str]]:
    """The file as a DICOM Part 10 file (unchanged when it is one) and the UIDs the spool keeps."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    sop_instance = str(
        ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", "")
    )
    if not sop_class or not sop_instance:
        raise ValueError("no SOP Class UID / SOP Instance UID")
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if data[128:132] != b"DICM" or not transfer_syntax:
        full = pydicom.dcmread(io.BytesIO(data), force=True)
        buffer = io.BytesIO()
        set_implementation(full.file_meta)  # the node writes this file's meta
        full.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        transfer_syntax = str(full.file_meta.TransferSyntaxUID)
    meta = {
        "sop_class_uid": sop_class,
        "sop_instance_uid": sop_instance,
        "transfer_syntax_uid": transfer_syntax,
    }
    return data, meta


def reload_refusal(node: Any, new: NodeConfig) -> str | None:
    """Why a new config must not replace the running one: it would acknowledge images into
    nowhere, or drop a destination that still has images queued for it."""
    gap = delivery_gap(new)
    if gap is not None:
        return gap
    kept = {d.name for d in new.destinations}
    for dest in node.config.destinations:
        queued = len(node.spool.names(OUTGOING, dest.name))
        if dest.name not in kept and queued:
            return (f"destination {dest.name!r} is not in the new config but {queued} image(s) "
                    f"wait in outgoing/{dest.name}/: keep it until they are delivered, or move "
                    f"them (`dicomnode queue list --dest {dest.name}`)")
    return None


def mark_restart_needed(spool: Any, reason: str) -> None:
    """Leave the reason where `dicomnode health` reads it; the next start removes it."""
    (spool.root / RESTART_NEEDED).write_text(reason + "\n")


def apply_config(node: Any, new: NodeConfig) -> None:
    """Swap a running node's config: routing/tag/classify settings apply to the next image; the
    disk floor at once; destinations added, removed or changed get their forwarders started,
    stopped or restarted. Receive settings need a restart (logged)."""
    from dicomnode.forward import Forwarder

    old: NodeConfig = node.config
    refusal = reload_refusal(node, new)
    if refusal is not None:
        raise ConfigError(refusal)
    access_keys = {"allowed_callers", "admit_own_ae_from_loopback"}
    if new.receive.model_dump(include=access_keys) != old.receive.model_dump(include=access_keys):
        if node.receiver is not None:
            node.receiver.update_access(new.receive)
        log.warning("config reload: the allow-list changed; it applies to new associations")
    others = set(type(new.receive).model_fields) - access_keys
    if new.receive.model_dump(include=others) != old.receive.model_dump(include=others):
        log.warning("config reload: receive settings other than the allow-list changed; they "
                    "apply after a restart (dicomnode health says so until then)")
        mark_restart_needed(node.spool, "receive settings changed in a reload")
    if new.spool.path != old.spool.path:
        log.warning("config reload: spool path changed; it applies after a restart")
        mark_restart_needed(node.spool, "spool.path changed in a reload")
        new = new.model_copy(update={"spool": old.spool})
    for dest in new.destinations:  # (not spool.ensure(): that clears tmp/, in use right now)
        for state in (OUTGOING, SENT, FAILED):
            node.spool.dir(state, dest.name).mkdir(parents=True, exist_ok=True)
    old_dests = {d.name: d for d in old.destinations}
    new_dests = {d.name: d for d in new.destinations}
    for name, dest in old_dests.items():
        if new_dests.get(name) != dest and name in node.forwarders:
            node.forwarders.pop(name).stop()  # finishes the image in hand first
    node.config = new
    if node.pipeline is not None:
        node.pipeline.config = new
    guard = getattr(node.receiver, "disk_guard", None) if node.receiver is not None else None
    if guard is not None:
        guard.min_free_bytes = int(new.disk.min_free_mb * 1024 * 1024)
    for name, dest in new_dests.items():
        if name not in node.forwarders:
            forwarder = Forwarder(dest, node.spool, node.journal or node.log_store,
                                  new.receive.ae_title)
            node.forwarders[name] = forwarder
            forwarder.start()
