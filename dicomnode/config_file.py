"""Reading a config file: strict YAML (duplicate keys refused), validation against the models in
dicomnode.config, and errors that name the file, the line and the key, say what is valid, and
suggest the closest known key for a typo; then the checks across sections (rules naming unknown
destinations, a routing that would acknowledge images into nowhere)."""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from dicomnode.config import DEFAULT_CONFIG_PATH, ConfigError, NodeConfig


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags: ('destinations', 1, 'dicom', 'port') -> (…, 1, 'port'),
    and its type names for plain unions ('allowed_callers', 'list[str]') -> ('allowed_callers',)."""
    tags = {"dicom", "folder"}
    return tuple(
        part
        for i, part in enumerate(loc)
        if not (i and isinstance(loc[i - 1], int) and part in tags)
        and not (isinstance(part, str) and ("[" in part or part in _TYPE_TAGS))
    )


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "function-after", "function-before"}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config model allows where `loc` points (for "did you mean")."""
    models: list[type[BaseModel]] = [NodeConfig]
    for part in loc:
        if isinstance(part, int):
            continue
        found: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None)
            if field is not None:
                found += _models_in(field.annotation)
        models = found
    return sorted({field.alias or name for model in models
                   for name, field in model.model_fields.items()})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """Walk the composed YAML tree along a pydantic error location; the deepest node found."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
            if child is None:  # the key itself is wrong (extra key) or missing: point at the key
                key = next((k for k, _ in node.value if k.value == part), None)
                return key or node
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _rule_named(loc: tuple[Any, ...], data: Any) -> str:
    """' (rule "name")' for an error inside routing.rules[i], so the operator finds the rule."""
    if len(loc) >= 3 and loc[:2] == ("routing", "rules") and isinstance(loc[2], int):
        try:
            return f' (rule "{data["routing"]["rules"][loc[2]]["name"]}")'
        except (KeyError, IndexError, TypeError):
            return ""
    return ""


def _describe(error: dict[str, Any], root: yaml.Node | None, source: str, data: Any = None) -> str:
    loc = _without_union_tags(tuple(error["loc"]))
    key = (".".join(str(p) for p in loc) or "(top level)") + _rule_named(loc, data)
    # a wrong or missing `type:` is reported on the list item; point at the type key instead
    node = _node_at(root, (*loc, "type") if error["type"].startswith("union_tag") else loc)
    if error["type"] == "extra_forbidden" and loc:  # point at the unknown key, not its value
        parent = _node_at(root, loc[:-1])
        if isinstance(parent, yaml.MappingNode):
            node = next((k for k, _ in parent.value if k.value == loc[-1]), node)
    where = f"{source}:{node.start_mark.line + 1}" if node is not None else source
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        message = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
        if not close and known:
            message += f" (valid: {', '.join(known)})"
    if error["type"] == "missing":
        message = "required key is missing"
    expected = error.get("ctx", {}).get("expected")
    valid = f" (valid: {expected})" if expected and expected not in message else ""
    return f"{where}: {key}: {message}{valid}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one,
    silently: half of a section would vanish)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"while reading the mapping that starts here (line "
                    f"{node.start_mark.line + 1})", node.start_mark,
                    f"duplicate key {key!r} (first on line {seen[key].start_mark.line + 1}): "
                    "give each key once", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _named_stream(text: str, source: str) -> io.StringIO:
    stream = io.StringIO(text)
    stream.name = source  # PyYAML names the file in its marks ("<unicode string>" otherwise)
    return stream


def parse_config(text: str, source: str = "<config>") -> NodeConfig:
    try:
        root = yaml.compose(_named_stream(text, source), Loader=_StrictLoader)
        data = yaml.load(_named_stream(text, source), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections")
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, root, source, data) for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    problems = _cross_check(config)
    if problems:
        lines = [
            _describe({"loc": loc, "msg": msg, "type": "value_error"}, root, source, data)
            for loc, msg in problems
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def _cross_check(config: NodeConfig) -> list[tuple[tuple[Any, ...], str]]:
    """What one section cannot check alone: rules naming destinations that do not exist."""
    known = [d.name for d in config.destinations]
    valid = ", ".join(known) or "no destinations are configured"
    problems = []
    for i, rule in enumerate(config.routing.rules):
        for j, name in enumerate(rule.destinations):
            if name not in known:
                loc = ("routing", "rules", i, "destinations", j)
                problems.append((loc, f"unknown destination {name!r} (valid: {valid})"))
    for j, name in enumerate(config.routing.default.destinations or []):
        if name not in known:
            loc = ("routing", "default", "destinations", j)
            problems.append((loc, f"unknown destination {name!r} (valid: {valid})"))
    return problems


def delivery_gap(config: NodeConfig) -> str | None:
    """Why this config would acknowledge images and send them nowhere; None when it cannot.
    A rule's `forward` always names destinations; the default route is the gap."""
    default = config.routing.default
    if default.action != "forward":
        return None  # discard: dropping unmatched images is what the operator asked for
    names = default.destinations
    if names is None:
        names = [d.name for d in config.destinations]
    if names:
        return None
    where = ("no destinations are configured" if not config.destinations
             else "routing.default.destinations is empty")
    return (f"images that match no routing rule would be acknowledged and sent nowhere "
            f"({where}): add `destinations:`, or set `routing: {{default: {{action: "
            f"discard}}}}` to drop them on purpose")


def load_config(path: Path | str | None = None) -> NodeConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))
