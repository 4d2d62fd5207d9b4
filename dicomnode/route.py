"""Route stage: which destinations an instance goes to, by the ordered rules in `routing:`.

Semantics (kept simple on purpose):
- Rules are tried in order. A rule matches when every condition it lists holds (no conditions:
  it matches everything).
- The first matching rule decides, unless it says `continue: true`: then its destinations are
  kept and the following rules are tried as well.
- `action: forward` sends to the rule's destinations; `action: discard` sends nowhere (destinations
  collected from earlier `continue` rules still apply).
- If no matching rule stopped the evaluation (none matched, or all that matched said `continue`),
  the `default` applies too (forward to the listed destinations, or to every destination when it
  lists none; or discard).
- The decision (matched rule names, destinations, whether the default applied) is stored with the
  instance in the log.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnode.config import NodeConfig
from dicomnode.config_routing import ClassificationMatch, Match, Rule, When
from dicomnode.logdb.entry import InstanceLogEntry

DEFAULT_RULE = "(default)"


@dataclass(frozen=True)
class RoutingDecision:
    destinations: list[str]
    rules: list[str] = field(default_factory=list)  # names of the rules that matched, in order
    action: str = "forward"  # "discard" when the deciding rule (or the default) discarded

    def as_log(self) -> dict:
        return {
            "rules": list(self.rules),
            "destinations": list(self.destinations),
            "action": self.action,
        }


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _one_matches(match: Match, value: Any) -> bool:
    text = str(value).strip()
    if match.equals is not None and text != str(match.equals).strip():
        # numbers compare as numbers: `Rows: 512` matches "512" and 512.0
        left, right = _number(text), _number(match.equals)
        if left is None or right is None or left != right:
            return False
    if match.one_of is not None and not any(
        text == str(option).strip()
        or (_number(text) is not None and _number(text) == _number(option))
        for option in match.one_of
    ):
        return False
    if match.glob is not None and not fnmatch.fnmatchcase(text, match.glob):
        return False
    if match.regex is not None and re.match(match.regex, text) is None:
        return False
    if match.network is not None:
        try:
            if ipaddress.ip_address(text) not in ipaddress.ip_network(match.network, strict=False):
                return False
        except ValueError:
            return False
    bounds = (match.gt, match.ge, match.lt, match.le)
    if any(b is not None for b in bounds):
        number = _number(text)
        if number is None:
            return False
        if match.gt is not None and not number > match.gt:
            return False
        if match.ge is not None and not number >= match.ge:
            return False
        if match.lt is not None and not number < match.lt:
            return False
        if match.le is not None and not number <= match.le:
            return False
    return True


def matches(match: Match, value: Any) -> bool:
    """One condition against one value (a list/MultiValue matches when any item does)."""
    items = [v for v in _values(value) if str(v).strip() != ""]
    if match.present is not None and bool(items) != match.present:
        return False
    tests_value = match.model_fields_set - {"present"}
    if not tests_value:
        return True
    return any(_one_matches(match, item) for item in items)


def _attribute(ds: Dataset | None, keyword: str) -> Any:
    if ds is None:
        return None
    try:
        element = ds.get(keyword)
    except Exception:  # a malformed element reads as absent rather than breaking routing
        return None
    if isinstance(element, Dataset) or (isinstance(element, list) and element
                                        and isinstance(element[0], Dataset)):  # fmt: skip
        return "present"  # sequences: only present/absent is meaningful
    return element


def _as_list(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _classification_matches(cond: ClassificationMatch, entry: InstanceLogEntry) -> bool:
    labels = _as_list(cond.label)
    if labels is not None and entry.label not in labels:
        return False
    if cond.confidence_above is not None and not (
        entry.confidence is not None and entry.confidence > cond.confidence_above
    ):
        return False
    if cond.confidence_below is not None and not (
        entry.confidence is not None and entry.confidence < cond.confidence_below
    ):
        return False
    actions = _as_list(cond.action)
    return actions is None or entry.action in actions


def peer_ip(peer_address: str) -> str:
    """The IP of receive's 'address:port': '10.0.0.5:41234' -> '10.0.0.5', '::1:104' -> '::1'
    (the port is stripped first, as receive always appends one), '[::1]:104' -> '::1'."""
    text = peer_address.strip()
    if text.startswith("["):
        return text[1 : text.find("]")]
    for candidate in (text.rsplit(":", 1)[0], text):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return text


def failed_conditions(when: When, entry: InstanceLogEntry, ds: Dataset | None) -> list[str]:
    """The conditions of `when` that do not hold (empty: the rule matches)."""
    failed = []
    for key, value in (
        ("calling_ae", entry.calling_ae),
        ("called_ae", entry.called_ae),
        ("peer_address", peer_ip(entry.peer_address or "")),
    ):
        condition = getattr(when, key)
        if condition is not None and not matches(condition, value):
            failed.append(f"{key} ({value!r})")
    for keyword, condition in when.attributes.items():
        value = _attribute(ds, keyword)
        if not matches(condition, value):
            shown = "absent" if value is None else repr(str(value))
            failed.append(f"attributes.{keyword} ({shown})")
    if when.classification is not None and not _classification_matches(when.classification, entry):
        failed.append(
            f"classification (label {entry.label}, confidence {entry.confidence}, "
            f"action {entry.action})"
        )
    return failed


def rule_matches(rule: Rule, entry: InstanceLogEntry, ds: Dataset | None) -> bool:
    return not failed_conditions(rule.when, entry, ds)


def route(config: NodeConfig, entry: InstanceLogEntry, ds: Dataset | None) -> RoutingDecision:
    """`entry` carries the peer, the UIDs and the classification; `ds` is None when unreadable."""
    destinations: list[str] = []
    matched: list[str] = []
    for rule in config.routing.rules:
        if not rule_matches(rule, entry, ds):
            continue
        matched.append(rule.name)
        if rule.action == "forward":
            destinations += [d for d in rule.destinations if d not in destinations]
        if not rule.continue_:
            action = "forward" if destinations else rule.action
            return RoutingDecision(destinations, matched, action)
    default = config.routing.default
    matched.append(DEFAULT_RULE)
    if default.action == "forward":
        names = default.destinations
        if names is None:
            names = [d.name for d in config.destinations]
        destinations += [d for d in names if d not in destinations]
    return RoutingDecision(destinations, matched, "forward" if destinations else default.action)
