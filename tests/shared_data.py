"""Where the read-only shared data lives (radiographs, DICOM corpus, weights); never copied in."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DICOMNODE_SHARED", REPO_ROOT.parent / "shared")).resolve()
DICOM_DIR = SHARED / "dicom"
CORPUS_DIR = DICOM_DIR / "corpus"
CORPUS_MANIFEST = CORPUS_DIR / "MANIFEST.csv"
XRAY_VIEWS = SHARED / "data" / "xray-views"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
CHEST_PA = DICOM_DIR / "cr-chest-pa.dcm"
CHEST_PA_MONOCHROME1 = DICOM_DIR / "cr-chest-pa-monochrome1.dcm"
