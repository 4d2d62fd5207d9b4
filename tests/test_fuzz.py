"""Fuzz the decode-and-tag path with hypothesis, seeded from ../shared/dicom/corpus.

What runs per example is what the pipeline does with a received file: parse it (any exception
there is logged `unreadable` by the pipeline), then `guard.preprocess_guarded` (size checks +
`preprocess_dataset`), then `tag.decide`/`tag.apply` and re-encoding. The properties:

- no exception escapes preprocessing except `PreprocessError` (and its guard subclasses);
- a successful decode is a uint8 224x224 array;
- tagging a dataset that parsed never raises, and the result re-encodes and parses back with the
  ViewPosition the tag stage wrote (re-encoding may fail only as the pipeline tolerates);
- no hang: each example has a SIGALRM deadline, and the whole run a hard subprocess timeout;
- bounded memory: the run has an address-space cap (RLIMIT_AS), and the guard limit is small.

CI runs a bounded ~40 s campaign in a subprocess. The longer campaign is:

    .venv/bin/python -m tests.test_fuzz --seconds 1800        # from the repository root

(`--seconds`, `--seed`; it prints the examples run and exits non-zero on the first failure, with
hypothesis' minimal failing input.)
"""

from __future__ import annotations

import argparse
import io
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.shared_data import CORPUS_DIR

REPO = Path(__file__).resolve().parent.parent
CORPUS = CORPUS_DIR / "files"
MAX_SEED_BYTES = 256 * 1024  # small seeds keep each example in the millisecond range
EXAMPLE_DEADLINE_S = 20  # one example; generous for a loaded 2-core CI machine
ADDRESS_SPACE_CAP = 3 * 1024**3  # the whole fuzz process, libraries included (~0.5 GiB)
CI_SECONDS = 40

# Elements the decoder trusts, with values that have broken decoders before.
NASTY_INTS = [0, 1, -1, 2, 3, 7, 8, 12, 15, 16, 17, 24, 31, 32, 33, 64, 255, 256, 4095, 65535]
PIXEL_ELEMENTS = {
    "Rows": ("US", NASTY_INTS),
    "Columns": ("US", NASTY_INTS),
    "BitsAllocated": ("US", NASTY_INTS),
    "BitsStored": ("US", NASTY_INTS),
    "HighBit": ("US", NASTY_INTS),
    "SamplesPerPixel": ("US", NASTY_INTS),
    "PixelRepresentation": ("US", [0, 1, 2, 65535]),
    "PlanarConfiguration": ("US", [0, 1, 2]),
    "NumberOfFrames": ("IS", ["0", "1", "2", "3", "-1", "1A", "100000", ""]),
    "PhotometricInterpretation": (
        "CS",
        ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "X", ""],
    ),
    "RescaleSlope": ("DS", ["0", "1", "-1", "1e308", "nan", "abc", ""]),
    "RescaleIntercept": ("DS", ["0", "-1024", "1e308", "inf", ""]),
    "WindowCenter": ("DS", ["0", "40", "-1e9", "1e308", "nan", ""]),
    "WindowWidth": ("DS", ["0", "1", "-5", "1e-300", "400", ""]),
    "ViewPosition": ("CS", ["AP", "PA", "LL", "LATERAL", "X" * 20, "", "\\"]),
    "Modality": ("CS", ["CR", "DX", "", "CR\\DX"]),
}


def _seed_files() -> list[Path]:
    files = sorted(p for p in CORPUS.glob("*.dcm") if p.stat().st_size <= MAX_SEED_BYTES)
    return files


class ExampleTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise ExampleTimeout(f"example took over {EXAMPLE_DEADLINE_S} s")


def decode_twice_if_late(decoder: Any, path: Path) -> Any:
    """The decode of `path` (an IsolatedDecoder's uint8 array), given a second try when the
    first ran past its deadline: a loaded machine (two cores, the rest of the suite) can push one
    decode past it, where an input that really decodes that slowly does so again, and then
    raises DecodeTimeout."""
    from dicomnode.preprocess import PreprocessError

    try:
        return decoder.preprocess_file(path)
    except PreprocessError as exc:
        if "DecodeTimeout" not in type(exc).__name__:
            raise
    return decoder.preprocess_file(path)


def decode_and_tag(data: bytes, decoder=None, scratch: Path | None = None) -> str:
    """The pipeline's per-image path on `data`; returns the outcome or raises on a bug.

    With `decoder` (an IsolatedDecoder) the pixels are decoded in its worker process, as the node
    does; without it, in this process (only safe for inputs known not to abort a C decoder).
    """
    import numpy as np
    import pydicom

    from dicomnode import tag
    from dicomnode.config import TagConfig
    from dicomnode.guard import DecoderCrashed, Limits, preprocess_guarded
    from dicomnode.preprocess import PreprocessError
    from tests.view_predictions import LATERAL

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        before = tag.current_view_position(ds)
    except Exception:
        return "unparseable"  # the pipeline logs `unreadable` and forwards the bytes untouched
    try:
        if decoder is None:
            # 64 MiB: far above every seed, low enough that a lying header cannot exhaust memory
            grey = preprocess_guarded(ds, Limits(max_pixel_bytes=64 * 1024 * 1024))
        else:
            assert scratch is not None
            scratch.write_bytes(data)
            grey = decode_twice_if_late(decoder, scratch)
    except DecoderCrashed:
        return "decoder-crashed"  # the worker died (C abort, memory cap); the node did not
    except PreprocessError as exc:
        assert "DecodeTimeout" not in type(exc).__name__, "decode hang"
        return "unreadable"
    assert isinstance(grey, np.ndarray) and grey.dtype == np.uint8 and grey.shape == (224, 224)

    prediction = LATERAL  # a certain lateral call: the policy writes or overwrites
    config = TagConfig(on_disagree="overwrite")
    decision = tag.decide(before, prediction, config)
    if not decision.writes:
        return decision.action
    try:
        tag.apply(ds, decision, prediction, "0" * 64, config, source_of_previous_values="FUZZ")
    except Exception:
        return "untaggable"  # the pipeline logs it unreadable and forwards the original file
    try:
        data = tag.encode_tagged(ds, decision.after)  # the pipeline's own write and read-back
    except tag.TaggedFileMismatch:
        return "untaggable"  # logged unreadable, the original forwarded untouched
    except Exception:
        return "unwritable"  # the pipeline catches this and forwards the original
    again = pydicom.dcmread(io.BytesIO(data), force=True)
    assert tag.current_view_position(again) == decision.after
    return decision.action


def _mutate_bytes(draw, st, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete", "u32"]))
        pos = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(chunk)] = chunk
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        else:  # a length or dimension field turned into an extreme value
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFF, 0x10000]))
            buf[pos : pos + 4] = value.to_bytes(4, "little")
    return bytes(buf)


def _set_raw(ds, keyword: str, vr: str, value: int | str) -> None:
    """Store the value's bytes as they would arrive, unvalidated ("1A" in an IS is the point)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    little = getattr(ds, "original_encoding", (False, True))[1] is not False
    if isinstance(value, int):
        raw = (value % 65536).to_bytes(2, "little" if little else "big")
    else:
        raw = value.encode("ascii")
        raw += b" " * (len(raw) % 2)
    tag = Tag(tag_for_keyword(keyword))
    implicit = getattr(ds, "original_encoding", (False, True))[0] is True
    ds[tag] = RawDataElement(tag, None if implicit else vr, len(raw), raw, 0, implicit, little)


def _mutate_elements(draw, st, data: bytes) -> bytes:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        return data
    for keyword in draw(st.lists(st.sampled_from(sorted(PIXEL_ELEMENTS)), max_size=4)):
        vr, values = PIXEL_ELEMENTS[keyword]
        _set_raw(ds, keyword, vr, draw(st.sampled_from(values)))
    if "PixelData" in ds and draw(st.booleans()):
        raw = ds["PixelData"].value
        ds["PixelData"].value = raw[: draw(st.integers(0, len(raw)))]
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer)
    except Exception:
        return data
    return buffer.getvalue()


def run_campaign(seconds: float, seed: int = 0):
    """Run hypothesis in rounds until `seconds` are spent; returns a Counter of outcomes."""
    import tempfile
    from collections import Counter

    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from dicomnode.guard import IsolatedDecoder, Limits

    seeds = [path.read_bytes() for path in _seed_files()]
    assert len(seeds) >= 40, "the corpus should give many small seeds"
    outcomes: Counter[str] = Counter()
    # GDCM aborts the whole process on some headers (e.g. BitsStored < BitsAllocated in JPEG
    # lossless), so decoding runs where the node runs it: in the killable worker.
    limits = Limits(
        max_pixel_bytes=64 * 1024 * 1024, timeout_s=EXAMPLE_DEADLINE_S, worker_memory_bytes=2**31
    )
    decoder = IsolatedDecoder(limits)
    scratch = Path(tempfile.mkdtemp(prefix="dicomnode-fuzz-")) / "input.dcm"

    @st.composite
    def inputs(draw):
        data = draw(st.sampled_from(seeds))
        if draw(st.booleans()):
            data = _mutate_elements(draw, st, data)
        if draw(st.booleans()):
            data = _mutate_bytes(draw, st, data)
        return data

    @settings(
        max_examples=150,
        deadline=None,  # wall-clock deadlines are flaky on a shared machine; SIGALRM bounds it
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(inputs())
    def property_holds(data: bytes) -> None:
        if time.monotonic() > deadline:  # past the campaign's time: finish the round at once
            return
        # the parse and tag steps, and the decode with its second try (each has its own limit)
        signal.alarm(EXAMPLE_DEADLINE_S * 3)
        try:
            outcomes[decode_and_tag(data, decoder, scratch)] += 1
        finally:
            signal.alarm(0)

    signal.signal(signal.SIGALRM, _on_alarm)
    deadline = time.monotonic() + seconds
    round_number = 0
    try:
        while time.monotonic() < deadline:
            hypothesis_seed(seed * 100_003 + round_number)(property_holds)()
            round_number += 1
    finally:
        decoder.close()
        scratch.unlink(missing_ok=True)
        scratch.parent.rmdir()
    return outcomes


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared is absent")
def test_every_corpus_file_meets_the_properties_unmutated():
    outcomes = {}
    for path in sorted(CORPUS.glob("*.dcm")):
        outcomes[path.name] = decode_and_tag(path.read_bytes())
    assert "unreadable" in outcomes.values()  # the malformed files are in there
    assert outcomes["CR__RG3_J2KR.dcm"] in ("agrees", "written", "overwritten", "disagrees")


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared is absent")
def test_bounded_fuzz_campaign():
    """~40 s of hypothesis in a child with a memory cap and a hard timeout (no hang, no leak)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_fuzz", "--seconds", str(CI_SECONDS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CI_SECONDS + 120,
        preexec_fn=_cap_memory,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "examples" in result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    args = parser.parse_args()
    _cap_memory()
    import warnings

    warnings.simplefilter("ignore")  # pydicom warns on every malformed element
    import logging

    logging.disable(logging.CRITICAL)
    started = time.monotonic()
    outcomes = run_campaign(args.seconds, args.seed)
    print(
        f"fuzz: {sum(outcomes.values())} examples in {time.monotonic() - started:.0f} s "
        f"(seed {args.seed}), no failures; outcomes {dict(outcomes.most_common())}"
    )


if __name__ == "__main__":
    main()
