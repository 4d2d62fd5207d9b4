"""Node configuration: pydantic models loaded from YAML, with errors that name the key and the line.

Relative paths are resolved against the working directory the node is started from, as DCMTK users
expect (`make run` starts it in the repository root, so `./var` is the repository's `var/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "dicomnode.yaml"

# ViewPosition (0018,5101) defined terms; the model's "LA" must be mapped to one of these.
VIEW_POSITION_TERMS = (
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT", "LATERAL",
)  # fmt: skip


class ConfigError(ValueError):
    """The configuration file is missing, not YAML, or not valid; the message says where and why."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class ReceiveConfig(_Strict):
    ae_title: str = Field("DICOMNODE", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    max_pdu: int = Field(0, ge=0, description="0 = unlimited")
    # seconds; None waits forever
    acse_timeout: float | None = 30.0
    dimse_timeout: float | None = 60.0
    network_timeout: float | None = 60.0

    @field_validator("ae_title")
    @classmethod
    def _ae_title_chars(cls, value: str) -> str:
        if "\\" in value or not value.strip() or not value.isascii():
            raise ValueError("AE title: 1-16 ASCII characters, no backslash, not all spaces")
        return value.strip()


class SpoolConfig(_Strict):
    path: Path = Path("var/spool")


class ClassifyConfig(_Strict):
    # Modalities whose images are classified; all others are forwarded untouched and logged skipped.
    modalities: list[str] = ["CR", "DX"]
    models_dir: Path | None = None  # None: the models/ folder shipped with the package
    variant: str | None = None  # None: the manifest's default_variant (the Int8 model)
    workers: int = Field(1, ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1, le=64)


class TagConfig(_Strict):
    ap_term: Literal["AP", "PA"] = "AP"
    la_term: Literal["LL", "RL", "LATERAL", "LAT"] = "LL"
    confidence_threshold: float = Field(0.90, ge=0.0, le=1.0)
    on_disagree: Literal["keep", "overwrite"] = "keep"
    # When the node writes ViewPosition, also write label, probabilities and model sha256 here.
    private_block: bool = True
    private_creator: str = Field("DICOMNODE VIEW 1", min_length=1, max_length=64)
    private_group: int = Field(0x0071, ge=0x0009, le=0xFFFF)

    @field_validator("private_group")
    @classmethod
    def _odd_group(cls, value: int) -> int:
        if value % 2 == 0 or value in (0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF):
            raise ValueError("private group must be odd and not 0001/0003/0005/0007/FFFF")
        return value


class LogConfig(_Strict):
    url: str = "sqlite:///var/dicomnode.sqlite3"
    patient_id: Literal["plain", "hash", "omit"] = "plain"
    patient_id_salt: str = ""
    retention_days: float | None = Field(None, ge=0)  # rows older than this are purged; None: keep


class WebConfig(_Strict):
    """The read-only auditor view (dicomnode.logdb.web): off by default, loopback unless a token."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8480, ge=0, le=65535)
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("token must be at least 16 characters (or leave it out)")
        return value


class DicomDestination(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["dicom"]
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = Field(None, max_length=16)  # None: the node's own AE title
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    idle_release_s: float = Field(
        10.0, ge=0.0
    )  # release the reused association after this idle time
    retry_delay_s: float = Field(5.0, ge=0.0)


class FolderDestination(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["folder"]
    path: Path


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="type")]


class NodeConfig(_Strict):
    receive: ReceiveConfig = ReceiveConfig()
    spool: SpoolConfig = SpoolConfig()
    classify: ClassifyConfig = ClassifyConfig()
    tag: TagConfig = TagConfig()
    log: LogConfig = LogConfig()
    web: WebConfig = WebConfig()
    destinations: list[Destination] = []

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [d.name for d in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {duplicates}")
        return value

    def destination(self, name: str) -> DicomDestination | FolderDestination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags: ('destinations', 1, 'dicom', 'port') -> (…, 1, 'port')."""
    tags = {"dicom", "folder"}
    return tuple(
        part
        for i, part in enumerate(loc)
        if not (i and isinstance(loc[i - 1], int) and part in tags)
    )


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


def _describe(error: dict[str, Any], root: yaml.Node | None, source: str) -> str:
    loc = _without_union_tags(tuple(error["loc"]))
    key = ".".join(str(p) for p in loc) or "(top level)"
    # a wrong or missing `type:` is reported on the list item; point at the type key instead
    node = _node_at(root, (*loc, "type") if error["type"].startswith("union_tag") else loc)
    where = f"{source}:{node.start_mark.line + 1}" if node is not None else source
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    if error["type"] == "missing":
        message = "required key is missing"
    expected = error.get("ctx", {}).get("expected")
    valid = f" (valid: {expected})" if expected and expected not in message else ""
    return f"{where}: {key}: {message}{valid}"


def parse_config(text: str, source: str = "<config>") -> NodeConfig:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e, root, source) for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(path: Path | str | None = None) -> NodeConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(text, str(path))
