"""The reviewers' rows of the log: verdicts (append-only) and decision previews; LogStore's
methods for them (LogStore inherits ReviewRows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from dicomnode.logdb.engine import to_utc_naive, utcnow
from dicomnode.logdb.models import TRUE_VIEWS, VERDICTS, InstanceRow, PreviewRow, VerdictRow


class ReviewRows:
    """Mixed into LogStore: uses its engine, write engine, write lock and _existing."""

    engine: Engine
    _write_engine: Engine

    def preview(self, decision_key: str) -> bytes | None:
        """The preview PNG (the 224x224 model input) kept with a decision, None if there is
        none (web.previews off, not classified, or purged)."""
        with self.engine.connect() as connection:
            png = connection.execute(select(PreviewRow.png).where(
                PreviewRow.decision_key == decision_key)).scalar_one_or_none()
        return bytes(png) if png is not None else None

    def _insert_previews(self, connection, previews: list[dict[str, Any]]) -> None:
        """Preview PNGs by decision key, each once (a replay finds its preview in already)."""
        existing = self._existing(connection, PreviewRow.decision_key,
                                  [p["decision_key"] for p in previews])
        rows = []
        for preview in previews:
            if preview["decision_key"] in existing:
                continue
            existing.add(preview["decision_key"])
            rows.append({"decision_key": preview["decision_key"],
                         "at": to_utc_naive(preview["at"]), "png": preview["png"]})
        if rows:
            connection.execute(insert(PreviewRow), rows)

    def record_verdict(self, instance_id: int, reviewer: str, verdict: str, true_view: str,
                       note: str | None = None, at: datetime | None = None) -> int:
        """Append a reviewer's verdict on a decision (a new row, never an edit); its row id."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if true_view not in TRUE_VIEWS:
            raise ValueError(f"true view {true_view!r} is not one of {', '.join(TRUE_VIEWS)}")
        if not reviewer or len(reviewer) > 64:
            raise ValueError("reviewer: 1 to 64 characters")
        values = {"instance_id": instance_id, "reviewer": reviewer, "verdict": verdict,
                  "true_view": true_view, "note": (note or "").strip()[:2000] or None,
                  "at": to_utc_naive(at) if at is not None else utcnow()}  # fmt: skip
        with self._writing(), self._write_engine.begin() as connection:
            if connection.execute(select(InstanceRow.id).where(
                    InstanceRow.id == instance_id)).scalar_one_or_none() is None:
                raise LookupError(f"no decision with id {instance_id}")
            return int(connection.execute(
                insert(VerdictRow).values(**values).returning(VerdictRow.id)).scalar_one())
