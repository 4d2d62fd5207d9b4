"""Node configuration: pydantic models loaded from YAML, with errors that name the key and the line.

Relative paths are resolved against the working directory the node is started from, as DCMTK users
expect (`make run` starts it in the repository root, so `./var` is the repository's `var/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dicomnode.config_routing import (
    Destination,
    DicomDestination,
    FolderDestination,
    RoutingConfig,
)

# Access control, TLS, hostile-input limits and metrics (security engineer's sections).
from dicomnode.hardening import (
    AllowedCallers,
    GuardConfig,
    MetricsConfig,
    TLSConfig,
    validate_allowed_callers,
)
from dicomnode.security import MIN_SECRET_LENGTH

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "dicomnode.yaml"

# ViewPosition (0018,5101) defined terms; the lateral class is written as tag.la_term.
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
    # 64 KiB PDUs keep a 16 MB instance from being buffered whole per association (0 = unlimited)
    max_pdu: int = Field(65536, ge=0, description="0 = unlimited")
    # A larger instance is answered 0xA700 (out of resources) and not stored.
    max_instance_mb: float = Field(4096, gt=0)
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

    # Concurrent associations beyond this are rejected (transient, local limit exceeded).
    max_associations: int = Field(32, ge=1, le=1000)
    # SIGTERM: associations in progress may finish (and release) for this long before the rest
    # are aborted; keep it under the service manager's stop timeout (systemd unit: 90 s).
    shutdown_grace_s: float = Field(30.0, ge=0.0)
    # Connections that have not yet asked for an association (stalled, scanning, slow) are
    # capped apart, so they never take an association slot; over the cap they are closed.
    max_pending_connections: int = Field(64, ge=1, le=10000)
    # Every PDU must arrive whole within this many seconds of its first byte (plus 1 s per MiB
    # it declares), and the A-ASSOCIATE-RQ within this many seconds of connecting; a stalled or
    # trickling peer is cut off, freeing its slot. 0 = no deadline.
    read_timeout_s: float = Field(10.0, ge=0.0)
    # [AE, ...] or {AE: [address or network, ...] | null}; unset: any calling AE may associate.
    allowed_callers: AllowedCallers = None
    # With an allow-list: the node's own AE title calling from 127.0.0.0/8 or ::1 (what
    # `dicomnode health` does) is admitted without being listed; false: list it yourself.
    admit_own_ae_from_loopback: bool = True
    tls: TLSConfig | None = None  # DICOM TLS on the listening port (no plain-TCP fallback)

    @field_validator("allowed_callers", mode="before")
    @classmethod
    def _callers_shape(cls, value: Any) -> Any:
        """One plain message for a wrong shape, not one per member of the union type."""
        def strings(items: Any) -> bool:
            return isinstance(items, list) and all(isinstance(i, str) for i in items)

        if value is None or strings(value) or (isinstance(value, dict) and all(
                isinstance(k, str) and (v is None or strings(v)) for k, v in value.items())):
            return value
        raise ValueError("expected a list of calling AE titles ([CT1, CR2]), or a mapping of "
                         "AE title to the addresses or networks it may call from ({CR2: "
                         "[10.1.2.0/24]}; null: any address)")

    @field_validator("allowed_callers")
    @classmethod
    def _valid_callers(cls, value: AllowedCallers) -> AllowedCallers:
        return validate_allowed_callers(value)


class SpoolConfig(_Strict):
    path: Path = Path("var/spool")
    # sent/ keeps a copy of each delivered image (for `queue retry`, audits, a PACS that lost
    # one). Purged by age (never kept longer than log.retention_days when that is set), by total
    # size, and oldest first whenever free space falls under twice disk.min_free_mb, so these
    # copies can never be what fills the disk. failed/ is kept until an operator acts.
    sent_retention_days: float = Field(7.0, ge=0.0)
    sent_max_mb: float = Field(10_240.0, ge=0.0)
    retention_interval_s: float = Field(300.0, gt=0.0)


class ClassifyConfig(_Strict):
    # Modalities whose images are classified; all others are forwarded untouched and logged skipped.
    modalities: list[str] = ["CR", "DX"]
    models_dir: Path | None = None  # None: the models/ folder shipped with the package
    variant: str | None = None  # None: the manifest's default_variant (the Int8 model)
    workers: int = Field(1, ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1, le=64)
    # CPU niceness of the classify workers and their decode processes: receiving (the C-STORE
    # reply a modality waits for) and forwarding keep priority over the AI on a busy box.
    nice: int = Field(10, ge=0, le=19)
    # Instances the node never classifies (their SOP class has no view to tag: CT, MR, SR, ...)
    # take their own lane, past the classify queue: a CT series does not wait behind CR films.
    # Order is kept within each lane (so within a series), not across lanes; false: one queue.
    pass_through_lane: bool = True


class ThresholdOverrides(_Strict):
    """Write thresholds over the model's calibrated probabilities; unset: the manifest's values
    (chosen out of fold for the model's wrong-write goal). The log records which applied."""

    frontal: float | None = Field(None, ge=0.5, le=1.0)
    lateral: float | None = Field(None, ge=0.5, le=1.0)
    ap_pa: float | None = Field(None, ge=0.5, le=1.0)
    chest: float | None = Field(None, ge=0.5, le=1.0)


# Keys of earlier versions, with what replaces them (a clear error beats "unknown key").
REMOVED_TAG_KEYS = {
    "ap_term": "the model now tells AP from PA itself; to fill frontal films whose AP vs PA it "
               "cannot tell, set tag.body_part_defaults (e.g. {HAND: PA, KNEE: AP})",
    "confidence_threshold": "thresholds now come from the model's manifest (calibrated out of "
                            "fold); override them with tag.thresholds: {frontal, lateral, ap_pa, "
                            "chest}",
}


def body_part_key(body_part: str | None) -> str:
    """BodyPartExamined as `tag.body_part_defaults` keys it: capitals, no spaces."""
    return "".join((body_part or "").upper().split())


class TagConfig(_Strict):
    la_term: Literal["LL", "RL", "LATERAL", "LAT"] = "LL"
    thresholds: ThresholdOverrides = ThresholdOverrides()
    # BodyPartExamined -> AP or PA, written for a certain frontal film whose AP vs PA the model
    # cannot tell (most non-chest films). Empty: the node abstains there. Logged as a default.
    body_part_defaults: dict[str, Literal["AP", "PA"]] = {}
    on_disagree: Literal["keep", "overwrite"] = "keep"
    # When the node writes ViewPosition, also write label, probabilities and model sha256 here.
    private_block: bool = True
    private_creator: str = Field("DICOMNODE VIEW 1", min_length=1, max_length=64)
    private_group: int = Field(0x0071, ge=0x0009, le=0xFFFF)

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, replacement in REMOVED_TAG_KEYS.items():
                if key in data:
                    raise ValueError(f"tag.{key} is no longer a setting: {replacement}")
        return data

    @field_validator("body_part_defaults")
    @classmethod
    def _body_parts_upper(cls, value: dict[str, str]) -> dict[str, str]:
        return {body_part_key(k): v for k, v in value.items()}

    def threshold_overrides(self) -> dict[str, float]:
        """The write thresholds set here (the rest come from the model's manifest)."""
        return self.thresholds.model_dump(exclude_none=True)

    @field_validator("private_group")
    @classmethod
    def _odd_group(cls, value: int) -> int:
        if value % 2 == 0 or value in (0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF):
            raise ValueError("private group must be odd and not 0001/0003/0005/0007/FFFF")
        return value


# Salts seen in examples and tutorials: as good as none.
PLACEHOLDER_SALTS = frozenset({"change-me", "changeme", "change-me-please", "salt", "secret",
                               "example", "example-salt", "your-salt-here", "replace-me",
                               "please-change-this-salt", "change-this-secret-salt"})


class LogConfig(_Strict):
    url: str = "sqlite:///var/dicomnode.sqlite3"
    patient_id: Literal["plain", "hash", "omit"] = "plain"
    patient_id_salt: str = ""
    retention_days: float | None = Field(None, ge=0)  # rows older than this are purged; None: keep

    @model_validator(mode="after")
    def _hash_needs_a_secret_salt(self) -> LogConfig:
        salt = self.patient_id_salt.strip()
        if self.patient_id == "hash" and (
                len(salt) < MIN_SECRET_LENGTH or salt.lower() in PLACEHOLDER_SALTS
                or len(set(salt)) < 4):
            raise ValueError(
                f"patient_id: hash needs patient_id_salt: a secret of at least "
                f"{MIN_SECRET_LENGTH} characters, not a placeholder (make one with python -c "
                "'import secrets; print(secrets.token_hex(16))'); with a guessable salt anyone "
                "can hash every likely patient ID and read the log's hashes back")
        return self


class ReviewerConfig(_Strict):
    """A reviewer who may log in to the web view and record verdicts."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password_hash: str  # scrypt$N$r$p$salt$hash, made by `dicomnode web hash-password`

    @field_validator("password_hash")
    @classmethod
    def _hash_form(cls, value: str) -> str:
        from dicomnode.web.passwords import parse_hash

        parse_hash(value)
        return value


class WebConfig(_Strict):
    """The auditor's web view (dicomnode.web): off by default; loopback unless authenticated and
    served over TLS; read-only except for configured reviewers."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8480, ge=0, le=65535)
    token: str | None = None  # read-only access (Bearer or ?token= once)
    # Keep each decision's 224x224 model input as a small PNG beside its log row, for reviewers.
    # Off by default: it is patient data; purged with the row by log retention.
    previews: bool = False
    reviewers: list[ReviewerConfig] = Field(default_factory=list)
    # Signs the session cookies; unset: a random one per start (sessions end with a restart).
    session_secret: str | None = None
    tls_cert: str | None = None  # PEM certificate (chain); needed beyond loopback
    tls_key: str | None = None  # its PEM private key
    # A signed-in session (reviewer, or a reader's ?token= session) ends after this many minutes
    # without a request.
    session_idle_min: float = Field(30.0, gt=0, le=24 * 60)

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_SECRET_LENGTH:
            raise ValueError(f"token must be at least {MIN_SECRET_LENGTH} characters (or leave "
                             "it out)")
        return value

    @field_validator("session_secret")
    @classmethod
    def _secret_long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 32:
            raise ValueError("session_secret must be at least 32 characters (python -c 'import "
                             "secrets; print(secrets.token_urlsafe(32))'), or leave it out")
        return value

    @model_validator(mode="after")
    def _public_address_needs_auth_and_tls(self) -> WebConfig:
        from dicomnode.web.settings import check_exposure

        check_exposure(self.host, self.token, bool(self.reviewers), self.tls_cert, self.tls_key)
        names = [r.name for r in self.reviewers]
        if len(set(names)) != len(names):
            raise ValueError("reviewers: each name once")
        return self


class DiskConfig(_Strict):
    # Below this much free space on the spool's file system, C-STOREs are answered 0xA700
    # (out of resources) instead of being written.
    min_free_mb: float = Field(200.0, ge=0.0)


class InboxConfig(_Strict):
    # A drop folder: DICOM files written here are processed like received ones (None: off).
    path: Path | None = None
    settle_s: float = Field(1.0, ge=0.0)  # a file must be unchanged this long before it is taken


class WatchConfig(_Strict):
    config: bool = True  # reload the config file when it changes (`dicomnode serve -c FILE`)


class NodeConfig(_Strict):
    receive: ReceiveConfig = ReceiveConfig()
    spool: SpoolConfig = SpoolConfig()
    classify: ClassifyConfig = ClassifyConfig()
    tag: TagConfig = TagConfig()
    log: LogConfig = LogConfig()
    web: WebConfig = WebConfig()
    destinations: list[Destination] = []
    routing: RoutingConfig = RoutingConfig()
    disk: DiskConfig = DiskConfig()
    inbox: InboxConfig = InboxConfig()
    watch: WatchConfig = WatchConfig()
    guard: GuardConfig = GuardConfig()
    metrics: MetricsConfig = MetricsConfig()

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
