"""Destinations and routing rules of the node configuration (the `destinations:`, `routing:` and
`retry:` sections): pydantic models, loaded with the rest by dicomnode.config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dicomnode.hardening import TLSConfig


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Strict):
    """Exponential backoff with jitter for transient failures (per destination).

    Attempt n (1-based) failing waits min(max_delay_s, initial_s * multiplier**(n-1))
    + uniform(0, jitter_s) before attempt n+1. Failures of the link (association refused, peer
    unreachable, no presentation context accepted, 0xA7xx out of resources) keep the queue in
    order: after `max_attempts` of them (null: never give up) the image goes to failed/.
    Failures of one image on a working association (it cannot be read or encoded, the peer
    aborts or times out while this image is in transfer) count separately: after
    `image_attempts` of them it goes to failed/ with its reason and the queue goes on.
    """

    initial_s: float = Field(2.0, gt=0.0)
    multiplier: float = Field(2.0, ge=1.0)
    max_delay_s: float = Field(300.0, gt=0.0)
    jitter_s: float = Field(1.0, ge=0.0)
    max_attempts: int | None = Field(None, ge=1)
    image_attempts: int = Field(3, ge=1)


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
    retry_delay_s: float = Field(5.0, ge=0.0)  # older form of retry.initial_s (used if no retry:)
    retry: RetryPolicy = RetryPolicy()
    tls: TLSConfig | None = None  # DICOM TLS to this destination

    @property
    def retry_policy(self) -> RetryPolicy:
        if "retry" not in self.model_fields_set and "retry_delay_s" in self.model_fields_set:
            return RetryPolicy(initial_s=max(self.retry_delay_s, 0.001))
        return self.retry


class FolderDestination(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["folder"]
    path: Path
    retry: RetryPolicy = RetryPolicy()

    @property
    def retry_policy(self) -> RetryPolicy:
        return self.retry


# ----- routing rules (dicomnode.route evaluates them) -----------------------------------------

Scalar = str | int | float


class Match(_Strict):
    """A test on one value. Several keys in one Match must all hold. A multi-valued attribute
    matches when any of its values does."""

    equals: Scalar | None = None
    one_of: list[Scalar] | None = Field(None, min_length=1)
    glob: str | None = None  # shell-style, case-sensitive: "CHEST*"
    regex: str | None = None  # Python re, searched from the start: "^(CR|DX)$"
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    present: bool | None = None  # true: the attribute exists and is not empty; false: absent/empty
    network: str | None = None  # peer address only: an IP network such as 10.0.0.0/8

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            import ipaddress

            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network: {exc}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not self.model_fields_set:
            raise ValueError(
                "empty condition (valid: equals, one_of, glob, regex, gt, ge, lt, le, present,"
                " network)"
            )
        return self


def as_match(condition: Any) -> Any:
    """`Modality: CR` is short for `{equals: CR}`; a list is short for `{one_of: [...]}`."""
    if isinstance(condition, list):
        return {"one_of": condition}
    if isinstance(condition, (str, int, float)) and not isinstance(condition, bool):
        return {"equals": condition}
    return condition


Condition = Annotated[Match, BeforeValidator(as_match)]


class ClassificationMatch(_Strict):
    label: str | list[str] | None = None  # the model's classes: AP, PA, LAT, OTHER
    confidence_above: float | None = Field(None, ge=0.0, le=1.0)
    confidence_below: float | None = Field(None, ge=0.0, le=1.0)
    # what the tag stage did: written, agrees, disagrees, overwritten, uncertain, skipped,
    # unreadable
    action: str | list[str] | None = None

    @field_validator("label")
    @classmethod
    def _known_labels(cls, value: str | list[str] | None) -> str | list[str] | None:
        # A label no model class has would never match: laterals would silently go nowhere.
        from dicomnode.view_policy import CLASSES

        for item in [value] if isinstance(value, str) else value or []:
            if item not in CLASSES:
                hint = " (lateral is LAT)" if str(item).upper() in (
                    "LA", "LL", "RL", "LATERAL") else ""
                raise ValueError(f"unknown label {item!r}{hint} (the model's classes: "
                                 f"{', '.join(CLASSES)})")
        return value

    @field_validator("action")
    @classmethod
    def _known_actions(cls, value: str | list[str] | None) -> str | list[str] | None:
        from dicomnode.logdb.entry import ACTIONS

        for item in [value] if isinstance(value, str) else value or []:
            if item not in ACTIONS:
                raise ValueError(f"unknown action {item!r} (valid: {', '.join(ACTIONS)})")
        return value


class When(_Strict):
    calling_ae: Condition | None = None
    called_ae: Condition | None = None
    peer_address: Condition | None = None  # the IP address, without the port
    attributes: dict[str, Condition] = {}  # pydicom keyword -> condition
    classification: ClassificationMatch | None = None

    @field_validator("attributes")
    @classmethod
    def _keywords(cls, value: dict[str, Any]) -> dict[str, Any]:
        from pydicom.datadict import tag_for_keyword

        unknown = [k for k in value if tag_for_keyword(k) is None]
        if unknown:
            raise ValueError(
                f"not DICOM keywords: {unknown} (valid: pydicom keywords such as Modality,"
                " BodyPartExamined, ViewPosition)"
            )
        return value


class Rule(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    when: When = When()  # no conditions: matches everything
    action: Literal["forward", "discard"] = "forward"
    destinations: list[str] = []
    continue_: bool = Field(False, alias="continue")

    @model_validator(mode="after")
    def _destinations_for_forward(self) -> Rule:
        if self.action == "forward" and not self.destinations:
            raise ValueError("a forward rule needs destinations (or use action: discard)")
        return self


class DefaultRoute(_Strict):
    action: Literal["forward", "discard"] = "forward"
    destinations: list[str] | None = None  # None: every configured destination


class RoutingConfig(_Strict):
    rules: list[Rule] = []
    default: DefaultRoute = DefaultRoute()

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, value: list[Rule]) -> list[Rule]:
        names = [r.name for r in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {duplicates}")
        return value


Destination = Annotated[DicomDestination | FolderDestination, Field(discriminator="type")]
