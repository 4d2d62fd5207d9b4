"""Chart geometry for the summary page: horizontal bar charts, drawn by the template as inline
SVG (no script)."""

from __future__ import annotations

from typing import Any


def bars(title: str, items: list[tuple[str, float]], value_format: str = "{:g}") -> dict[str, Any]:
    """Geometry of a horizontal bar chart (inline SVG, drawn by the template)."""
    peak = max((v for _, v in items), default=0) or 1
    row, label_width, bar_width = 18, 200, 320
    drawn = []
    for i, (label, value) in enumerate(items):
        width = bar_width * value / peak
        drawn.append({"label": label, "short": label[:32], "y": i * row + 2,
                      "width": f"{width:.1f}", "end": f"{label_width + width + 4:.1f}",
                      "value": value_format.format(value)})  # fmt: skip
    return {"title": title, "rows": drawn, "row": row, "label_width": label_width,
            "width": label_width + bar_width + 80, "height": row * len(items) + 4}
