"""CR series: ViewPosition belongs to the CR Series module (PS3.3 C.8.1.1), yet one CR series may
hold a PA and a lateral. The node's policy: every instance keeps its own view (a true value per
image beats a consistent one that is false for half of them), and the log says so on each
instance whose view differs from another instance of its series, so that an auditor, and a PACS
that copies series attributes from the first instance, can see it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pydicom.uid import ComputedRadiographyImageStorage

MAX_SERIES = 10_000  # series remembered (oldest forgotten first): a few MB at most


class SeriesViews:
    """ViewPosition per instance of recent CR series, across the pipeline's workers."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self.max_series = max_series
        self._series: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, sop_class_uid: str | None, series_uid: str | None, sop_instance_uid: str,
             view: str | None) -> str | None:
        """Record this instance's view; a note for the log when its CR series holds others."""
        if sop_class_uid != ComputedRadiographyImageStorage or not series_uid or not view:
            return None
        with self._lock:
            views = self._series.setdefault(series_uid, {})
            self._series.move_to_end(series_uid)
            views[sop_instance_uid] = view
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
            others = sorted({v for uid, v in views.items()
                             if uid != sop_instance_uid and v != view})
        if not others:
            return None
        return (f"CR series also holds ViewPosition {', '.join(others)}; each instance keeps "
                "its own (ViewPosition is a CR Series attribute)")
