"""Spool: atomic accept, claim, resume and dispatch; the folders are the state machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.spool import Spool


def test_accept_claim_dispatch_and_resume(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    spool.ensure(["a", "b"])
    first = spool.accept(b"first", {"sop_instance_uid": "1.2.3"})
    second = spool.accept(b"second", {"sop_instance_uid": "1.2.4"})
    assert spool.names("incoming") == [first.stem, second.stem]  # name order = arrival order
    assert spool.read_meta(first)["sop_instance_uid"] == "1.2.3"

    claimed = spool.claim(first.stem)
    assert claimed is not None and claimed.read_bytes() == b"first"
    assert spool.claim(first.stem) is None  # a second worker does not get it too
    spool.dispatch(first.stem, claimed, ["a", "b"], {"sop_instance_uid": "1.2.3", "instance_id": 7})
    for dest in ("a", "b"):
        out = spool.dir("outgoing", dest) / f"{first.stem}.dcm"
        assert out.read_bytes() == b"first" and spool.read_meta(out)["instance_id"] == 7
    assert os.stat(spool.dir("outgoing", "a") / f"{first.stem}.dcm").st_nlink == 2  # one copy
    assert not list(spool.dir("processing").iterdir())

    spool.mark_sent("a", first.stem, {"attempts": 1})
    spool.mark_failed("b", first.stem, {"error": "refused 0xA900"})
    assert spool.counts() == {
        "incoming": 1, "processing": 0, "outgoing/a": 0, "outgoing/b": 0,
        "sent/a": 1, "sent/b": 0, "failed/a": 0, "failed/b": 1,
    }  # fmt: skip
    assert spool.read_meta(spool.dir("failed", "b") / f"{first.stem}.dcm")["error"]

    assert spool.claim(second.stem) is not None  # then the node stops mid-way
    assert Spool(tmp_path / "spool").resume() == 1
    assert spool.names("incoming") == [second.stem]


def test_failed_write_leaves_nothing(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    os.rmdir(spool.dir("tmp"))
    with pytest.raises(OSError):
        spool.accept(b"data", {})
    assert not list(spool.dir("incoming").iterdir())
