"""Query parameters of the search, summary and export pages -> LogFilter."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

from dicomnode.logdb.entry import ACTIONS, patient_id_in_configured_form
from dicomnode.logdb.query import DELIVERY_STATUSES, LogFilter
from dicomnode.view_policy import CLASSES

LOGGED_LABELS = (*CLASSES, "LA")  # LA: the lateral class of the first (AP/LA) model
FILTER_FIELDS = (
    # (query parameter, label, input type)
    ("since", "Received from (UTC)", "text"),
    ("until", "Received before (UTC)", "text"),
    ("day", "Day (UTC)", "date"),
    ("study", "Study UID", "text"),
    ("series", "Series UID", "text"),
    ("sop", "SOP Instance UID", "text"),
    ("accession", "Accession number", "text"),
    ("patient", "Patient ID", "text"),
    ("calling_ae", "Calling AE", "text"),
    ("modality", "Modality", "text"),
    ("label", "Label", "select:" + ",".join(LOGGED_LABELS)),
    ("action", "Action", "select:" + ",".join(ACTIONS)),
    ("min_confidence", "Confidence ≥", "number"),
    ("max_confidence", "Confidence ≤", "number"),
    ("model", "Model sha256 (prefix)", "text"),
    ("delivery", "Delivery", "select:" + ",".join(DELIVERY_STATUSES)),
)
SUMMARY_FIELDS = ("since", "until", "calling_ae", "modality", "model")
FILTER_NAMES = tuple(name for name, _, _ in FILTER_FIELDS)


class BadRequest(ValueError):
    pass


def parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not an ISO date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not a number") from None


def filter_from_params(params: dict[str, str], patient_form: str = "plain",
                       patient_salt: str = "") -> LogFilter:
    def get(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    since = parse_time(get("since"), "since") if get("since") else None
    until = parse_time(get("until"), "until") if get("until") else None
    if get("day"):
        start = datetime.combine(parse_time(get("day"), "day").date(), time(), timezone.utc)
        since, until = start, start + timedelta(days=1)
    patient = get("patient")
    if patient is not None:
        if patient_form == "omit":
            raise BadRequest("patient IDs are not logged (log.patient_id: omit)")
        patient = patient_id_in_configured_form(patient, patient_form, patient_salt)
    try:
        return LogFilter(
            since=since, until=until, study_uid=get("study"), series_uid=get("series"),
            sop_uid=get("sop"), patient_id=patient, calling_ae=get("calling_ae"),
            modality=get("modality"), label=get("label"), action=get("action"),
            min_confidence=parse_float(get("min_confidence"), "min_confidence")
            if get("min_confidence") else None,
            max_confidence=parse_float(get("max_confidence"), "max_confidence")
            if get("max_confidence") else None,
            model_sha256=get("model"), delivery=get("delivery"),
            accession_number=get("accession"),
        )  # fmt: skip
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def kept_params(params: dict[str, str]) -> dict[str, str]:
    """The filter parameters that are set (for paging and export links)."""
    return {k: v for k, v in params.items() if k in FILTER_NAMES and v}
