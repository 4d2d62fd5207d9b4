"""dicom3tools' validators (Debian package dicom3tools) as the tests use them: what a file's IOD
check (dciodvfy) or a set of files' entity check (dcentvfy) reports, and what the node added."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# What the node's output may add, each listed with its reason in docs/conformance-statement.md:
# dicom3tools has no dictionary for other vendors' private blocks, the node's included.
ALLOWED_ADDITIONS = (
    re.compile(r"^\(0x0071,0x10[0-9a-f]{2}\)\s+\?\s+- Warning - Unrecognized tag - assuming "
               r"explicit value representation OK$"),
)


def dciodvfy(path: Path) -> set[str]:
    """Every line dciodvfy prints for one file (it reports on stderr)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}


def dcentvfy(paths: list[Path]) -> set[str]:
    """Every line dcentvfy prints for a set of files (one study, its series and instances)."""
    result = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}


def added_by_node(before: set[str], after: set[str]) -> set[str]:
    """Messages about the output that the input did not have, less the listed exceptions."""
    return {line for line in after - before
            if not any(rule.match(line) for rule in ALLOWED_ADDITIONS)}
