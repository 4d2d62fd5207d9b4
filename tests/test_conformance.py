"""What the node writes passes third-party validators (dicom3tools' dciodvfy and dcentvfy) with
nothing added but what docs/conformance-statement.md lists; its private block reads in DCMTK and
Orthanc through the shipped dictionaries; it writes only into CR and DX images."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.dicom3tools import added_by_node, dcentvfy, dciodvfy
from tests.node_helpers import (
    PEER_ENV,
    Orthanc,
    as_cr_image,
    instance_rows,
    jpeg_as_dicom,
    storescu,
    without_view_position,
)
from tests.shared_data import CHEST_PA, CORPUS_DIR, SHARED, XRAY_VIEWS

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

REPO = Path(__file__).resolve().parent.parent
DICTIONARIES = REPO / "docs" / "dictionaries"
FILES = CORPUS_DIR / "files"
FRONTAL_JPEG = XRAY_VIEWS / "circ-ml-CXR-View" / "frontal" / "C.jpg"  # frontal chest, MIT
LATERAL_JPEG = XRAY_VIEWS / "circ-ml-CXR-View" / "lateral" / "F.jpg"  # lateral chest, MIT
STORESCU_OPTION = {  # the option that makes storescu propose (and send) the file's own syntax
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.90": "-xv",
}  # fmt: skip


def dcmtk(tool: str, *args: Path | str) -> None:
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True, env=PEER_ENV)


def in_syntaxes(source: Path, folder: Path, stem: str) -> list[Path]:
    """A baseline-JPEG radiograph as JPEG baseline, uncompressed Explicit and Implicit VR,
    JPEG lossless (DCMTK's encoder) and JPEG 2000 lossless (pydicom's), each its own instance."""
    native = folder / f"{stem}-explicit.dcm"
    dcmtk("dcmdjpeg", source, native)
    implicit = folder / f"{stem}-implicit.dcm"
    dcmtk("dcmconv", "+ti", native, implicit)
    lossless = folder / f"{stem}-jpegll.dcm"
    dcmtk("dcmcjpeg", "+e1", native, lossless)
    j2k = folder / f"{stem}-j2k.dcm"
    ds = pydicom.dcmread(native)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(j2k)
    files = [source, native, implicit, lossless, j2k]
    for path in files[1:]:  # one instance per file, as a modality would send them
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(path)
    return files


def radiograph_suite(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suite = [
        FILES / "CR__RG1_UNCR.dcm",  # Philips CR chest, PA recorded
        without_view_position(FILES / "CR__RG1_J2KR.dcm", folder / "rg1-j2k-no-view.dcm"),
        without_view_position(FILES / "CR__RG3_UNCR.dcm", folder / "rg3-no-view.dcm"),
        FILES / "CR__77654033_CR1_6154.dcm",  # Agfa CR, LL recorded
        FILES / "DX__animals_cat.dcm",  # DX for presentation, AP recorded
        as_cr_image(CHEST_PA, folder / "chest-as-cr.dcm"),
        CHEST_PA,  # Secondary Capture: never tagged
    ]
    for modality in ("CR", "DX"):
        for view, jpeg in (("lateral", LATERAL_JPEG), ("frontal", FRONTAL_JPEG)):
            stem = f"{modality.lower()}-{view}"
            base = jpeg_as_dicom(jpeg, folder / f"{stem}-jpeg.dcm", modality)
            suite += in_syntaxes(base, folder, stem)
    return suite


def syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_every_output_passes_dciodvfy_with_nothing_added(start_node, tmp_path):
    suite = radiograph_suite(tmp_path / "in")
    node = start_node([{"name": "out", "type": "folder", "path": str(tmp_path / "out")}],
                      tag={"body_part_defaults": {"CHEST": "PA"}})  # fmt: skip
    for path in suite:
        result = storescu(node.port, path, options=("-R", STORESCU_OPTION[syntax_of(path)]))
        assert result.returncode == 0, result.stderr
    assert node.wait_idle(180)

    added = {}
    for path in suite:
        out = tmp_path / "out" / f"{uid_of(path)}.dcm"
        extra = added_by_node(dciodvfy(path), dciodvfy(out))
        if extra:
            added[path.name] = sorted(extra)
        got, sent = pydicom.dcmread(out), pydicom.dcmread(path)
        assert got.PixelData == sent.PixelData  # the node never touches pixel data
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert got.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
        assert got.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert added == {}, json.dumps(added, indent=1)

    rows = {r.sop_instance_uid: r for r in instance_rows(node)}
    written = {p.name: rows[uid_of(p)] for p in suite if rows[uid_of(p)].action == "written"}
    # Every lateral synthetic film was written LL, in every syntax and both classes.
    assert {n for n, r in written.items() if r.view_position_after == "LL"} == {
        p.name for p in suite if "-lateral-" in p.name}
    assert any(r.view_position_after == "PA" for r in written.values())  # the CHEST default
    for name, row in written.items():
        out = pydicom.dcmread(tmp_path / "out" / f"{row.sop_instance_uid}.dcm")
        previous = out.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
        if name.startswith("dx-"):  # DX: the coded view beside ViewPosition, both recorded
            code = out.ViewCodeSequence[0]
            assert (code.CodeValue, code.CodingSchemeDesignator) == (
                {"LL": "399173006", "PA": "272479007"}[row.view_position_after], "SCT")
            assert len(previous.ViewCodeSequence) == 0 and previous.ViewPosition == ""
        else:
            assert "ViewCodeSequence" not in out and "ViewCodeSequence" not in previous
    chest_sc = rows[uid_of(CHEST_PA)]
    assert chest_sc.action == "skipped" and "Secondary Capture" in chest_sc.decision_reason
    assert rows[uid_of(tmp_path / "in" / "chest-as-cr.dcm")].action != "skipped"


def test_cr_series_with_two_views_keeps_each_and_the_log_says_so(start_node, tmp_path):
    """A PA and a lateral in one CR series: each keeps its own ViewPosition (the documented
    policy); dcentvfy reports exactly that difference at Series level, nothing else."""
    folder = tmp_path / "in"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    pa = jpeg_as_dicom(FRONTAL_JPEG, folder / "pa.dcm", "CR")
    lateral = jpeg_as_dicom(LATERAL_JPEG, folder / "lateral.dcm", "CR")
    for number, path in enumerate((pa, lateral), start=1):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        if path == pa:
            ds.ViewPosition = "PA"
        ds.save_as(path)
    node = start_node([{"name": "out", "type": "folder", "path": str(tmp_path / "out")}])
    assert storescu(node.port, pa, lateral, options=("-R", "-xy")).returncode == 0
    assert node.wait_idle(60)
    outputs = [tmp_path / "out" / f"{uid_of(p)}.dcm" for p in (pa, lateral)]
    assert [pydicom.dcmread(p).ViewPosition for p in outputs] == ["PA", "LL"]
    added = dcentvfy(outputs) - dcentvfy([pa, lateral])
    assert len(added) == 1, added
    (line,) = added
    assert "ViewPosition" in line and "Series" in line
    notes = [r.decision_reason or "" for r in instance_rows(node)]
    assert any("CR series also holds ViewPosition" in n for n in notes), notes


def tagged_implicit_output(start_node, tmp_path: Path) -> Path:
    lateral = jpeg_as_dicom(LATERAL_JPEG, tmp_path / "lateral.dcm", "CR")
    implicit = tmp_path / "lateral-implicit.dcm"
    dcmtk("dcmdjpeg", "+ti", lateral, implicit)
    node = start_node([{"name": "out", "type": "folder", "path": str(tmp_path / "out")}])
    assert storescu(node.port, implicit, options=("-R", "-xi")).returncode == 0
    assert node.wait_idle(60)
    out = tmp_path / "out" / f"{uid_of(implicit)}.dcm"
    assert syntax_of(out) == "1.2.840.10008.1.2" and pydicom.dcmread(out).ViewPosition == "LL"
    return out


def test_private_block_reads_in_dcmtk_and_orthanc_through_the_shipped_dictionaries(
        start_node, tmp_path):
    out = tagged_implicit_output(start_node, tmp_path)
    standard = [p for p in ("/usr/share/libdcmtk17/dicom.dic", "/usr/share/libdcmtk17/private.dic")
                if Path(p).exists()]  # fmt: skip
    plain = subprocess.run(["dcmdump", str(out)], capture_output=True, text=True, check=True)
    assert "(0071,1001) ??" in plain.stdout  # Implicit VR without a dictionary: opaque
    with_dict = subprocess.run(
        ["dcmdump", str(out)], capture_output=True, text=True, check=True,
        env={**os.environ, "DCMDICTPATH": ":".join(
            [*standard, str(DICTIONARIES / "dicomnode-private.dic")])},
    )  # fmt: skip
    lines = {line.split()[-1]: line
             for line in with_dict.stdout.splitlines() if line.startswith("(0071,10")}
    assert set(lines) == {"DicomnodeViewLabel", "DicomnodeProbabilityAP", "DicomnodeProbabilityPA",
                          "DicomnodeProbabilityLateral", "DicomnodeProbabilityOther",
                          "DicomnodeModelSHA256", "DicomnodeSoftware"}  # fmt: skip
    assert "CS [LAT]" in lines["DicomnodeViewLabel"]
    assert " DS [" in lines["DicomnodeProbabilityPA"]

    snippet = json.loads((DICTIONARIES / "orthanc-dictionary.json").read_text())
    orthanc = Orthanc(tmp_path / "orthanc", **snippet).start()
    try:
        assert storescu(orthanc.dicom_port, out, options=("-xi",), called_ae="ORTHANC"
                        ).returncode == 0  # fmt: skip
        tags = orthanc.get(f"/instances/{orthanc.find_instance(uid_of(out))}/tags")
    finally:
        orthanc.stop()
    label = tags["0071,1001"]
    assert label["Name"] == "DicomnodeViewLabel" and label["Type"] == "String"
    assert label["Value"].strip() == "LAT"
    assert float(tags["0071,1006"]["Value"]) + float(tags["0071,1003"]["Value"]) <= 1.0
