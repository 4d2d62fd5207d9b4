"""Hostile-input guards: size limits read from headers, and the killable decode worker."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomnode.guard import (
    DecoderCrashed,
    DecodeTimeout,
    GuardError,
    ImageTooLarge,
    IsolatedDecoder,
    Limits,
    MalformedCodestream,
    MiB,
    check_dataset,
    check_file,
    declared_pixel_bytes,
)
from dicomnode.preprocess import PreprocessError
from tests.node_helpers import dataset_bytes
from tests.shared_data import SHARED

CORPUS = SHARED / "dicom" / "corpus" / "files"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared is absent")


def _image_dataset(rows: int, columns: int, syntax: str, pixel_data: bytes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_data
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax == JPEGBaseline8Bit:
        ds["PixelData"].VR = "OB"
    return ds


def _jpeg_bomb() -> Dataset:
    """A real 16x16 JPEG whose SOF header is patched to 60000x60000 (a 3.4 GB decode) inside a
    dataset that declares 16x16: only the codestream header tells the truth."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    codestream = bytearray(buffer.getvalue())
    sof = codestream.index(b"\xff\xc0")
    codestream[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    return _image_dataset(16, 16, JPEGBaseline8Bit, encapsulate([bytes(codestream)]))


def test_declared_size_of_a_real_radiograph():
    ds = pydicom.dcmread(CORPUS / "CR__RG3_UNCR.dcm", stop_before_pixels=True)
    assert declared_pixel_bytes(ds) == 1760 * 1760 * 2


def test_declared_size_over_the_limit_is_refused_before_decoding():
    # the header claims 40000 x 40000 x 100 frames x 16 bit; the pixel data is 4 bytes
    ds = _image_dataset(40000, 40000, ExplicitVRLittleEndian, b"\0" * 4)
    ds.NumberOfFrames = 100
    ds.BitsAllocated = 16
    with pytest.raises(ImageTooLarge, match="declared pixel data"):
        check_dataset(ds, Limits())
    assert isinstance(ImageTooLarge("x"), PreprocessError)  # the pipeline logs it unreadable


def test_garbage_dimension_values_are_a_guard_error():
    ds = pydicom.dcmread(CORPUS / "malformed__badVR.dcm")  # NumberOfFrames "1A"
    with pytest.raises(GuardError, match="NumberOfFrames"):
        check_dataset(ds, Limits())


def test_jpeg_codestream_bomb_is_refused_although_the_dataset_declares_16x16():
    bomb = _jpeg_bomb()
    assert declared_pixel_bytes(bomb) == 256
    with pytest.raises(ImageTooLarge, match="expand past"):
        check_dataset(bomb, Limits())


def test_jpeg2000_codestream_dimensions_are_checked():
    ds = pydicom.dcmread(CORPUS / "CR__RG3_J2KR.dcm")
    check_dataset(ds, Limits())  # the real image passes the default limit
    ds.Rows = ds.Columns = 8  # a header that understates the codestream (1760 x 1760)
    with pytest.raises(ImageTooLarge, match="expand past"):
        check_dataset(ds, Limits(max_pixel_bytes=1 * MiB))


JP2_WRAPPED = CORPUS / "SC-quirk__GDCMJ2K_TextGBR.dcm"  # a JP2 file (boxes), not a raw J2K


def _jp2_mutated(how: str) -> Dataset:
    """The corpus's JP2-wrapped image with its header box (jp2h, before the codestream box)
    given length 0 (the one-byte insertion the fuzz campaign found hanging pydicom's parser),
    or the frame cut off two bytes into that box's header (the truncation it found next)."""
    ds = pydicom.dcmread(JP2_WRAPPED)
    frame = bytearray(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    header = frame.index(b"jp2h") - 4
    if how == "zero length":
        frame[header : header + 4] = (0).to_bytes(4, "big")
    else:
        del frame[header + 2 :]
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


@pytest.mark.parametrize("how", ["zero length", "cut off"])
def test_a_jp2_box_walk_that_would_loop_pydicom_is_refused_before_decoding(how, tmp_path):
    check_dataset(pydicom.dcmread(JP2_WRAPPED), Limits())  # the real file passes
    with pytest.raises(MalformedCodestream, match="has length 0 before the codestream box"):
        check_dataset(_jp2_mutated(how), Limits())
    # In the decode worker too: refused at once as unreadable, not killed at a deadline.
    path = tmp_path / "looping.dcm"
    _jp2_mutated(how).save_as(path, enforce_file_format=True)
    with IsolatedDecoder(Limits(timeout_s=20)) as isolated:
        with pytest.raises(MalformedCodestream):
            isolated.preprocess_file(path)
        assert isolated.restarts == 0


def test_deflate_bomb_is_refused_before_inflating_it(tmp_path):
    ds = _image_dataset(16, 16, DeflatedExplicitVRLittleEndian, b"\0" * 256)
    ds.add_new((0x0009, 0x0010), "LO", "DICOMNODE TEST")
    ds.add_new((0x0009, 0x1000), "OB", b"\0" * (48 * MiB))  # deflates to ~50 KiB
    path = tmp_path / "deflate-bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 1 * MiB
    with pytest.raises(ImageTooLarge, match="inflates past"):
        check_file(path, Limits(max_pixel_bytes=1 * MiB))
    check_file(path, Limits(max_pixel_bytes=64 * MiB))  # inside a larger budget it passes
    check_file(CORPUS / "SC__image_dfl.dcm", Limits())  # a real deflated file passes


def test_no_corpus_image_is_refused_by_the_default_limits():
    refused = []
    for path in sorted(CORPUS.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, force=True)
            check_file(path, Limits())
            check_dataset(ds, Limits())
        except ImageTooLarge as exc:
            refused.append((path.name, str(exc)))
        except Exception:
            continue  # malformed files fail elsewhere; this test is about false refusals
    assert refused == []


@pytest.fixture
def decoder():
    with IsolatedDecoder(Limits(timeout_s=60)) as isolated:
        yield isolated


def test_isolated_decoder_returns_the_same_pixels_as_in_process(decoder):
    from dicomnode.preprocess import preprocess_file

    path = CORPUS / "CR__RG3_J2KR.dcm"
    np.testing.assert_array_equal(decoder.preprocess_file(path), preprocess_file(path))


def test_isolated_decoder_reports_unreadable_images_and_keeps_working(decoder, tmp_path):
    with pytest.raises(PreprocessError, match="no pixel data"):
        decoder.preprocess_file(CORPUS / "nonimage__test-SR.dcm")
    bomb_path = tmp_path / "bomb.dcm"
    _jpeg_bomb().save_as(bomb_path, enforce_file_format=True)
    with pytest.raises(ImageTooLarge):
        decoder.preprocess_file(bomb_path)
    assert decoder.preprocess_file(CORPUS / "CR__77654033_CR1_6154.dcm").shape == (224, 224)
    assert decoder.restarts == 0


def test_an_image_over_the_time_limit_is_abandoned_and_the_next_one_proceeds():
    # A 3.1 Mpixel JPEG 2000 cannot be read and decoded in a millisecond, so this image
    # deterministically overruns; what matters is what happens next.
    with IsolatedDecoder(Limits(timeout_s=0.001)) as decoder:
        decoder._ensure_worker()
        first_pid = decoder._process.pid
        with pytest.raises(DecodeTimeout):
            decoder.preprocess_file(CORPUS / "CR__RG1_J2KR.dcm")
        assert decoder.restarts == 1
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)  # the stuck worker is gone, not left running
        decoder.limits = Limits(timeout_s=60)
        assert decoder.preprocess_file(CORPUS / "CR__RG3_UNCR.dcm").shape == (224, 224)


def test_worker_memory_limit_turns_an_oversized_decode_into_an_error(tmp_path):
    # An 8000 x 8000 colour JPEG is 183 MiB decoded (colour skips the reduced-resolution fast
    # path): under the size limit, over a 600 MiB address-space cap once the worker's ~450 MiB of
    # libraries are counted, so the decode hits MemoryError in the worker, not in the node.
    buffer = io.BytesIO()
    Image.new("RGB", (8000, 8000), (30, 60, 90)).save(buffer, format="JPEG")
    ds = _image_dataset(8000, 8000, JPEGBaseline8Bit, encapsulate([buffer.getvalue()]))
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    limits = Limits(worker_memory_bytes=600 * MiB, timeout_s=120)
    with IsolatedDecoder(limits) as decoder:
        # pydicom's decoders hit MemoryError, or GDCM aborts the process (uncaught C++
        # std::bad_alloc): either way the node sees DecoderCrashed and carries on.
        with pytest.raises(DecoderCrashed):
            decoder.preprocess_file(path)
        small = CORPUS / "CR__77654033_CR2_6247.dcm"
        assert decoder.preprocess_file(Path(small)).shape == (224, 224)


def test_a_decoder_that_aborts_the_process_only_takes_the_worker_down(tmp_path):
    # Found by tests/test_fuzz.py: GDCM throws an uncaught C++ exception (std::terminate, SIGABRT)
    # for JPEG lossless with BitsStored < BitsAllocated. Decoded in the node's own process this
    # would kill the node; in the worker it is one unreadable image.
    ds = pydicom.dcmread(CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm")
    ds.BitsStored = 7
    path = tmp_path / "gdcm-abort.dcm"
    ds.save_as(path)
    with IsolatedDecoder(Limits(timeout_s=60)) as decoder:
        with pytest.raises(DecoderCrashed):
            decoder.preprocess_file(path)
        assert decoder.restarts == 1
        assert decoder.preprocess_file(CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm").shape == (224, 224)


# --- on the node: hostile images are logged unreadable and forwarded untouched -------------------


def test_node_survives_a_decoder_abort_and_a_deflate_bomb(start_node, recording_scp, tmp_path):
    from tests.node_helpers import instance_rows, send_files

    aborts = pydicom.dcmread(CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm")
    aborts.Modality, aborts.BitsStored = "CR", 7  # GDCM: SIGABRT in the decoder
    # filed as a CR image: the node decodes only the SOP classes it may tag
    aborts.SOPClassUID = aborts.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    aborts.SOPInstanceUID = generate_uid()
    aborts.file_meta.MediaStorageSOPInstanceUID = aborts.SOPInstanceUID
    aborts_path = tmp_path / "aborts.dcm"
    aborts.save_as(aborts_path)

    bomb = _image_dataset(16, 16, DeflatedExplicitVRLittleEndian, b"\0" * 256)
    bomb.Modality = "CR"
    bomb.SOPClassUID = bomb.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    bomb.add_new((0x0009, 0x0010), "LO", "DICOMNODE TEST")
    bomb.add_new((0x0009, 0x1000), "OB", b"\0" * (24 * MiB))
    bomb_path = tmp_path / "bomb.dcm"
    bomb.save_as(bomb_path, enforce_file_format=True)

    fine = CORPUS / "CR__77654033_CR2_6247.dcm"
    node = start_node([recording_scp.destination()], guard={"max_pixel_mib": 2})
    assert send_files(node.port, aborts_path, bomb_path, fine) == [0, 0, 0]
    recording_scp.wait_for(3)
    assert node.wait_idle(120)

    rows = {row.sop_instance_uid: row for row in instance_rows(node)}
    aborted = rows[aborts.SOPInstanceUID]
    assert aborted.action == "unreadable" and "worker died" in aborted.error
    bombed = rows[bomb.SOPInstanceUID]
    assert bombed.action == "unreadable" and "inflates past" in bombed.error
    fine_uid = pydicom.dcmread(fine, stop_before_pixels=True).SOPInstanceUID
    assert rows[fine_uid].action != "unreadable"  # the node carried on classifying
    for source, uid in ((aborts_path, aborts.SOPInstanceUID), (bomb_path, bomb.SOPInstanceUID)):
        forwarded = recording_scp.by_uid(uid).encoded
        assert dataset_bytes(forwarded) == dataset_bytes(source.read_bytes())  # untouched
    registry = node.metrics.registry
    assert registry.get_sample_value("dicomnode_images_unreadable_total") == 2
    assert registry.get_sample_value("dicomnode_inference_seconds_count") == 1


def test_decompress_isolated_matches_in_process_and_contains_an_abort(tmp_path):
    from dicomnode.guard import decompress_isolated

    source = CORPUS / "CR__RG3_J2KR.dcm"
    decompressed = decompress_isolated(source)
    reference = pydicom.dcmread(source)
    reference.decompress(generate_instance_uid=False)
    assert decompressed.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decompressed.SOPInstanceUID == reference.SOPInstanceUID
    np.testing.assert_array_equal(decompressed.pixel_array, reference.pixel_array)

    aborts = pydicom.dcmread(CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm")
    aborts.BitsStored = 7
    aborts.save_as(tmp_path / "aborts.dcm")
    with pytest.raises(DecoderCrashed):
        decompress_isolated(tmp_path / "aborts.dcm")
    assert decompress_isolated(source).Rows == 1760  # the shared worker came back


def test_forwarding_fallback_survives_a_decoder_abort(start_node, tmp_path):
    from tests.node_helpers import RecordingSCP, forward_rows, send_files

    aborts = pydicom.dcmread(CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm")  # JPEG lossless
    aborts.BitsStored = 7
    aborts.SOPInstanceUID = generate_uid()
    aborts.file_meta.MediaStorageSOPInstanceUID = aborts.SOPInstanceUID
    aborts.save_as(tmp_path / "aborts.dcm")
    fine = CORPUS / "SC__SC_rgb_jpeg_gdcm.dcm"
    # a peer that accepts only uncompressed: the node must decompress to send
    sink = RecordingSCP(transfer_syntaxes=[ExplicitVRLittleEndian]).start()
    try:
        node = start_node([sink.destination()], classify={"modalities": []})
        assert send_files(node.port, tmp_path / "aborts.dcm", fine) == [0, 0]
        received = sink.wait_for(1)
        assert node.wait_idle(60)
        assert [r.sop_instance_uid for r in received] == [str(pydicom.dcmread(fine).SOPInstanceUID)]
        failed = [r for r in forward_rows(node) if r.sop_instance_uid == aborts.SOPInstanceUID]
        assert failed and failed[-1].outcome == "failed" and "worker died" in failed[-1].detail
    finally:
        sink.stop()


def test_the_decode_deadline_scales_with_the_declared_image_size():
    limits = Limits(timeout_s=30.0, min_timeout_s=5.0, timeout_per_mpixel_s=1.0)
    film = pydicom.dcmread(CORPUS / "CR__RG1_J2KR.dcm", stop_before_pixels=True)  # 1955x1841
    assert limits.deadline_s(film) == pytest.approx(5.0 + 1955 * 1841 / 1e6)
    small = _image_dataset(16, 16, ExplicitVRLittleEndian, b"\0" * 512)
    assert limits.deadline_s(small) == pytest.approx(5.0 + 256 / 1e6)
    huge = _image_dataset(16, 16, ExplicitVRLittleEndian, b"\0" * 512)
    huge.Rows = huge.Columns = 30000
    assert limits.deadline_s(huge) == 30.0  # never past the cap
    garbage = _image_dataset(16, 16, ExplicitVRLittleEndian, b"\0" * 512)
    garbage.Rows = "many"
    assert limits.deadline_s(garbage) == 30.0  # the guard refuses it anyway; no deadline games


def test_a_decode_past_its_size_scaled_deadline_does_not_hold_the_films_behind_it(
        start_node, recording_scp, tmp_path):
    """A film that decodes longer than its deadline (here: a deadline made tiny, standing in for
    the slow hostile codestreams the fuzz campaign finds) is cut off at that deadline, not at
    guard.timeout_s: forwarded untouched, logged unreadable, and the films behind it are
    classified."""
    import time

    from tests.node_helpers import instance_rows, send_files

    slow = tmp_path / "slow.dcm"
    ds = pydicom.dcmread(CORPUS / "CR__RG1_J2KR.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(slow)
    small = []
    for n in range(5):
        film = pydicom.dcmread(CORPUS / "CR__77654033_CR2_6247.dcm")
        film.SOPInstanceUID = film.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        film.save_as(tmp_path / f"film{n}.dcm")
        small.append(tmp_path / f"film{n}.dcm")
    # A deadline of 0.05 s whatever the size: the J2K film needs more (>= 80 ms here), the 16x16
    # films ~10 ms; the fixed cap stays at 60 s, which the films must not wait for.
    node = start_node([recording_scp.destination()],
                      guard={"timeout_s": 60, "min_timeout_s": 0.05,
                             "timeout_per_mpixel_s": 0})  # fmt: skip
    started = time.monotonic()
    assert send_files(node.port, slow, *small) == [0] * 6
    recording_scp.wait_for(6, timeout=60)
    elapsed = time.monotonic() - started
    assert node.wait_idle(60)
    rows = {row.sop_instance_uid: row for row in instance_rows(node)}
    assert rows[ds.SOPInstanceUID].action == "unreadable"
    assert "exceeded 0.05 s" in rows[ds.SOPInstanceUID].error
    assert [rows[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)].action
            for f in small].count("unreadable") == 0  # the films behind it were classified
    assert dataset_bytes(recording_scp.by_uid(ds.SOPInstanceUID).encoded) == dataset_bytes(
        slow.read_bytes())  # forwarded untouched
    assert elapsed < 30, f"the films waited {elapsed:.1f} s: the 60 s cap applied"
    print(f"slow film cut off at its deadline; 6 images delivered in {elapsed:.1f} s")


def _copies(source: Path, count: int, target: Path, stem: str) -> list[Path]:
    paths = []
    for n in range(count):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(target / f"{stem}{n}.dcm")
        paths.append(target / f"{stem}{n}.dcm")
    return paths


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize("guard, outcome", [
    ({"min_timeout_s": 60.0, "patience_s": 0.02}, "classified"),
    ({"min_timeout_s": 0.05, "patience_s": 0.02}, "unreadable"),
    ({"min_timeout_s": 60.0, "patience_s": 30, "slow_lane_mpixel": 1}, "classified"),
], ids=["past-patience", "past-patience-then-deadline", "declared-size"])
def test_a_slow_decode_moves_to_the_slow_lane_and_the_films_behind_it_go_on(
        start_node, recording_scp, tmp_path, guard, outcome):
    """The 1955 x 1841 J2K film goes to the slow lane: its decode outlasts a tiny
    guard.patience_s (0.02 s; it needs >= 80 ms here, as a slow hostile codestream needs more
    than the real 3 s), or it declares more than guard.slow_lane_mpixel (1 MP here; 40 by
    default) and goes there without trying. There it gets its whole deadline and is classified
    (60 s), or is cut off at that deadline and logged unreadable (0.05 s). Either way the five
    16 x 16 films sent after it are classified."""
    from tests.node_helpers import instance_rows, send_files

    [slow] = _copies(CORPUS / "CR__RG1_J2KR.dcm", 1, tmp_path, "slow")
    films = _copies(CORPUS / "CR__77654033_CR2_6247.dcm", 5, tmp_path, "film")
    node = start_node([recording_scp.destination()],
                      guard={"timeout_s": 60, "timeout_per_mpixel_s": 0, **guard})
    assert send_files(node.port, slow, *films) == [0] * 6
    recording_scp.wait_for(6, timeout=60)
    assert node.wait_idle(60)
    rows = {row.sop_instance_uid: row for row in instance_rows(node)}
    slow_row = rows[_uid(slow)]
    assert "decoded in the slow lane" in (slow_row.decision_reason or "")
    if outcome == "classified":
        assert slow_row.action != "unreadable" and slow_row.label, slow_row.error
    else:
        assert slow_row.action == "unreadable" and "exceeded 0.05 s" in slow_row.error
        assert dataset_bytes(recording_scp.by_uid(_uid(slow)).encoded) == dataset_bytes(
            slow.read_bytes())  # forwarded untouched
    assert [rows[_uid(f)].action for f in films].count("unreadable") == 0
    assert not list((node.spool.dir("incoming")).glob("*.dcm"))  # nothing left waiting
