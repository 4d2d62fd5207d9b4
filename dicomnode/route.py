"""Route stage: which destinations an instance goes to.

No rules configured yet: every configured destination gets every instance. The routing-rules issue
extends `route` (same signature); the decision is stored with the instance in the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from dicomnode.config import NodeConfig
from dicomnode.logdb.entry import InstanceLogEntry


@dataclass(frozen=True)
class RoutingDecision:
    destinations: list[str]
    rules: list[str] = field(default_factory=list)  # names of the rules that matched

    def as_log(self) -> dict:
        return {"rules": list(self.rules), "destinations": list(self.destinations)}


def route(config: NodeConfig, entry: InstanceLogEntry, ds: Dataset | None) -> RoutingDecision:
    """`entry` carries the peer, the UIDs and the classification; `ds` is None when unreadable."""
    return RoutingDecision(destinations=[d.name for d in config.destinations])
