"""`dicomnode log export-reviews`: reviewed films from the spool and an archive become a folder
in the xray-views layout (labels.csv + 8-bit grey JPEGs), decoded by the node's own code; films
found nowhere are listed. That the output trains is checked in tests/test_training.py."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.logdb.review_export import region_of
from dicomnode.preprocess import dataset_to_grey
from tests.review_helpers import ARCHIVE_FILM, SPOOL_FILM, build_reviewed_log
from tests.shared_data import SHARED, XRAY_VIEWS

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared absent")


def test_region_table() -> None:
    assert [region_of(b) for b in ("CHEST", "hand", "C SPINE", "SKULL", "HIP", "WHOLEBODY",
                                   None)] == ["chest", "limbs", "spine", "skull",
                                              "abdomen_pelvis", "mixed", "mixed"]


def test_export_reviews_writes_the_xray_views_layout(tmp_path: Path) -> None:
    log = build_reviewed_log(tmp_path / "node")
    out = tmp_path / "export"
    args = ["log", "export-reviews", "--out", str(out), "--db", log.url]
    result = CliRunner().invoke(app, [*args, "--archive", str(log.archive)])
    assert result.exit_code == 0, result.output
    assert f"instance 3 (SOP Instance UID {log.uids['missing']})" in result.output
    assert "2 reviewed films written" in result.output and "1 missing" in result.output

    with open(out / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    shared_columns = (XRAY_VIEWS / "labels.csv").read_text().splitlines()[0].split(",")
    assert reader.fieldnames == shared_columns
    spool_key, archive_key = log.keys["spool"], log.keys["archive"]
    assert [(r["file"], r["label"], r["view"], r["region"], r["source"], r["patient_id"],
             r["body_part"]) for r in rows] == [
        (f"reviews/lateral/{archive_key}.jpg", "lateral", "LL", "spine", "reviews",
         "study:1.2.3.study", "cspine"),  # no patient id logged: the study groups its films
        (f"reviews/lateral/{spool_key}.jpg", "lateral", "LL", "chest", "reviews",
         "9f86d081884c7d65", "chest"),  # the newest verdict (wrong, true view LL) counts
    ]
    assert "wrong, true view LL, by dr-a" in rows[1]["origin"]
    for row, film in zip(rows, (ARCHIVE_FILM, SPOOL_FILM), strict=True):
        written = out / row["file"]
        assert hashlib.sha256(written.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(written) as image:
            assert image.format == "JPEG" and image.mode == "L"
            assert max(image.size) <= 512
            pixels = np.asarray(image, dtype=np.float32)
        # the node's decode and window, only resized and JPEG-compressed
        grey = Image.fromarray(dataset_to_grey(pydicom.dcmread(film)), mode="L")
        grey.thumbnail((512, 512), Image.Resampling.LANCZOS)
        assert pixels.shape == np.asarray(grey).shape
        # (JPEG quality 92: a few grey levels; another window or an inversion is tens)
        assert np.abs(pixels - np.asarray(grey, dtype=np.float32)).mean() < 4.0
    assert sorted(p.name for p in out.rglob("*.jpg")) == sorted(
        [f"{archive_key}.jpg", f"{spool_key}.jpg"])

    # Without the archive the archive film is missing too, and its old JPEG goes with it.
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--archive" in result.output and "1 reviewed films written" in result.output
    assert [p.name for p in out.rglob("*.jpg")] == [f"{spool_key}.jpg"]
    assert len((out / "labels.csv").read_text().splitlines()) == 2


def test_export_reviews_fails_on_a_log_it_cannot_open(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["log", "export-reviews", "--out", str(tmp_path / "x"),
                                      "--db", str(tmp_path / "none.sqlite3")])
    assert result.exit_code == 2 and "cannot open log database" in result.output
