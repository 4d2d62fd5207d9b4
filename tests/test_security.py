"""Access control and DICOM TLS against real peers: pynetdicom on loopback, DCMTK storescu +tls.

Test certificates and keys are generated here at test time with the openssl CLI (never committed).
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicomnode.security import (
    AccessPolicy,
    Rejection,
    SecurityConfigError,
    TLSSettings,
    access_control_handlers,
    client_ssl_context,
    server_ssl_context,
)
from tests.node_helpers import DISCARD_UNMATCHED

NODE_AE = "DICOMNODE"
NO_CLASSIFY = {"classify": {"modalities": []}}  # these tests are about the network side


# --- certificates -----------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=dicomnode test {name}",
        cwd=folder,
    )  # fmt: skip


def _make_leaf(folder: Path, name: str, ca: str, san: str) -> None:
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """TEST-ONLY keys: a CA, a server and a client it signed, and a rogue CA with its client."""
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca")
    _make_ca(folder, "rogue-ca")
    _make_leaf(folder, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _make_leaf(folder, "client", "ca", "DNS:modality")
    _make_leaf(folder, "rogue-client", "rogue-ca", "DNS:intruder")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a real SCP -------------------------------------------------------------------------------


@pytest.fixture
def scp(tmp_path):
    """Start a pynetdicom storage/verification SCP on loopback; yields a starter."""
    servers = []
    stored: list[str] = []
    refusals: list[tuple] = []

    def handle_store(event):
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def start(policy: AccessPolicy | None = None, ssl_context: ssl.SSLContext | None = None):
        ae = AE(ae_title=NODE_AE)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        handlers = [(evt.EVT_C_STORE, handle_store)]
        if policy is not None:
            handlers += access_control_handlers(
                policy, on_reject=lambda *args: refusals.append(args)
            )
        port = _free_port()
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        servers.append(server)
        return port

    start.stored = stored
    start.refusals = refusals
    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()


def _associate(port: int, calling: str = "MODALITY", called: str = NODE_AE, tls_args=None):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)


def _rejection_codes(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected, "association was not rejected"
    primitive = assoc.acceptor.primitive
    return (primitive.result, primitive.result_source, primitive.diagnostic)


def _ct_file(folder: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "TLS-TEST"
    ds.Modality = "CT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# --- policy decisions -------------------------------------------------------------------------


def test_policy_open_by_default_checks_nothing():
    assert AccessPolicy().check("ANY", "ANYTHING", "203.0.113.5") is None


def test_policy_reject_codes_follow_ps3_8():
    policy = AccessPolicy.from_settings(
        NODE_AE, {"MODALITY": ["192.0.2.0/24", "2001:db8::/64"], "WORKSTATION": None}
    )
    assert policy.check("MODALITY", NODE_AE, "192.0.2.44") is None
    assert policy.check("MODALITY", NODE_AE, "::ffff:192.0.2.44") is None
    assert policy.check("MODALITY", NODE_AE, "2001:db8::9") is None
    assert policy.check("WORKSTATION", NODE_AE, "198.51.100.1") is None
    # called AE wrong: rejected-permanent, service-user, called-AE-title-not-recognised
    assert policy.check("MODALITY", "OTHER", "192.0.2.44").codes == (1, 1, 7)
    # unknown caller: rejected-permanent, service-user, calling-AE-title-not-recognised
    assert policy.check("INTRUDER", NODE_AE, "192.0.2.44").codes == (1, 1, 3)
    # known caller, wrong address: same reason, and the explanation says why
    wrong_address = policy.check("MODALITY", NODE_AE, "198.51.100.1")
    assert wrong_address.codes == (1, 1, 3)
    assert "198.51.100.1" in wrong_address.explanation


def test_policy_config_errors_name_the_setting():
    with pytest.raises(SecurityConfigError, match=r"allowed_callers\.MODALITY.*'not-an-ip'"):
        AccessPolicy.from_settings(NODE_AE, {"MODALITY": ["not-an-ip"]})
    with pytest.raises(SecurityConfigError, match="1-16 characters"):
        AccessPolicy.from_settings(NODE_AE, ["A_TITLE_LONGER_THAN_16"])


# --- access control on a live association -------------------------------------------------------


def test_live_rejections_carry_the_proper_codes_and_are_logged(scp, caplog):
    callers = {"MODALITY": ["127.0.0.1"], "FAR": ["10.9.0.0/16"]}
    port = scp(AccessPolicy.from_settings(NODE_AE, callers))
    caplog.set_level(logging.WARNING, logger="dicomnode.security")

    accepted = _associate(port)
    assert accepted.is_established
    assert accepted.send_c_echo().Status == 0x0000
    accepted.release()

    assert _rejection_codes(_associate(port, calling="INTRUDER")) == (1, 1, 3)
    assert _rejection_codes(_associate(port, called="NOTTHENODE")) == (1, 1, 7)
    assert _rejection_codes(_associate(port, calling="FAR")) == (1, 1, 3)

    reasons = [(r[0].codes, r[1], r[3]) for r in scp.refusals]
    assert reasons == [
        ((1, 1, 3), "INTRUDER", "127.0.0.1"),
        ((1, 1, 7), "MODALITY", "127.0.0.1"),
        ((1, 1, 3), "FAR", "127.0.0.1"),
    ]
    assert isinstance(scp.refusals[0][0], Rejection)
    assert sum("association refused" in r.getMessage() for r in caplog.records) == 3


def test_dcmtk_echoscu_sees_the_rejection_reason(scp):
    port = scp(AccessPolicy.from_settings(NODE_AE, ["MODALITY"]))
    ok = subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", NODE_AE, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", NODE_AE, "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0
    text = (refused.stdout + refused.stderr).lower()
    assert "association rejected" in text
    assert "calling ae title not recognized" in text


# --- TLS --------------------------------------------------------------------------------------


def _server_tls(pki: Path, require_client: bool = True) -> ssl.SSLContext:
    return server_ssl_context(
        TLSSettings(
            certificate=pki / "server.pem",
            private_key=pki / "server.key",
            ca_certificates=pki / "ca.pem",
            require_client_certificate=require_client,
        )
    )


def _storescu_tls(pki: Path, key: str, cert: str, port: int, dicom_file: Path):
    return subprocess.run(
        ["storescu", "+tls", str(pki / key), str(pki / cert), "-pw", "+cf", str(pki / "ca.pem"),
         "-aet", "MODALITY", "-aec", NODE_AE, "127.0.0.1", str(port), str(dicom_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_dcmtk_storescu_over_tls_with_accepted_certificate_stores(scp, pki, tmp_path):
    assert (
        "+tls"
        in subprocess.run(["storescu", "--help"], capture_output=True, text=True, timeout=30).stdout
    ), "Debian's DCMTK build is expected to have TLS"
    port = scp(AccessPolicy.from_settings(NODE_AE, ["MODALITY"]), _server_tls(pki))
    dicom_file = _ct_file(tmp_path)
    result = _storescu_tls(pki, "client.key", "client.pem", port, dicom_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(scp.stored) == 1


def test_dcmtk_storescu_with_certificate_from_unknown_ca_is_refused(scp, pki, tmp_path):
    port = scp(ssl_context=_server_tls(pki))
    result = _storescu_tls(pki, "rogue-client.key", "rogue-client.pem", port, _ct_file(tmp_path))
    assert result.returncode != 0
    assert scp.stored == []


def test_client_without_certificate_is_refused_and_with_one_accepted(scp, pki):
    port = scp(ssl_context=_server_tls(pki))
    # a TLS client that trusts the server but presents no certificate of its own
    anonymous = client_ssl_context(TLSSettings(ca_certificates=pki / "ca.pem"))
    refused = _associate(port, tls_args=(anonymous, None))
    assert not refused.is_established

    identified = client_ssl_context(
        TLSSettings(
            certificate=pki / "client.pem",
            private_key=pki / "client.key",
            ca_certificates=pki / "ca.pem",
        )
    )
    accepted = _associate(port, tls_args=(identified, None))
    assert accepted.is_established
    assert accepted.send_c_echo().Status == 0x0000
    accepted.release()


def test_destination_context_refuses_a_server_it_does_not_trust(scp, pki):
    port = scp(ssl_context=_server_tls(pki, require_client=False))
    trusts_other_ca = client_ssl_context(TLSSettings(ca_certificates=pki / "rogue-ca.pem"))
    assert not _associate(port, tls_args=(trusts_other_ca, None)).is_established
    # hostname checking, when asked for, uses the SAN the server certificate carries
    checks_name = client_ssl_context(
        TLSSettings(ca_certificates=pki / "ca.pem", check_hostname=True)
    )
    assoc = _associate(port, tls_args=(checks_name, "localhost"))
    assert assoc.is_established
    assoc.release()


def test_openssl_s_client_handshake_reports_the_verified_chain(scp, pki):
    port = scp(ssl_context=_server_tls(pki))
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki / "ca.pem"),
         "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"), "-brief"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Verification: OK" in output
    assert "TLSv1.3" in output or "TLSv1.2" in output


def test_tls_settings_errors_name_the_file(pki, tmp_path):
    with pytest.raises(SecurityConfigError, match=r"tls\.certificate: file .*missing\.pem"):
        server_ssl_context(
            TLSSettings(
                certificate=tmp_path / "missing.pem",
                private_key=pki / "server.key",
                ca_certificates=pki / "ca.pem",
            )
        )
    with pytest.raises(SecurityConfigError, match="ca_certificates: required"):
        server_ssl_context(
            TLSSettings(certificate=pki / "server.pem", private_key=pki / "server.key")
        )
    with pytest.raises(SecurityConfigError, match="do not load"):
        server_ssl_context(
            TLSSettings(
                certificate=pki / "server.pem",
                private_key=pki / "client.key",  # key of another certificate
                ca_certificates=pki / "ca.pem",
            )
        )


# --- wired into the node (receive.allowed_callers / max_associations / tls, destination tls) ---


def _node_tls(pki: Path, **extra) -> dict:
    return {
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        "ca_certificates": str(pki / "ca.pem"),
        **extra,
    }


def test_node_enforces_the_allow_list_and_its_called_ae(start_node):
    node = start_node([], routing=DISCARD_UNMATCHED,
                      receive={"allowed_callers": {"MODALITY": ["127.0.0.0/8"]}}, **NO_CLASSIFY)
    port = node.port
    assert _associate(port).is_established  # MODALITY from 127.0.0.1
    assert _rejection_codes(_associate(port, calling="INTRUDER")) == (1, 1, 3)
    assert _rejection_codes(_associate(port, called="NOTTHENODE")) == (1, 1, 7)
    # the node's own AE title from loopback is admitted, for `dicomnode health`
    assert _associate(port, calling=NODE_AE).is_established


def test_admitting_the_nodes_own_ae_is_an_explicit_setting(start_node):
    node = start_node([], routing=DISCARD_UNMATCHED, **NO_CLASSIFY, receive={
        "allowed_callers": ["MODALITY"], "admit_own_ae_from_loopback": False})
    assert _associate(node.port).is_established
    assert _rejection_codes(_associate(node.port, calling=NODE_AE)) == (1, 1, 3)


def test_node_limits_concurrent_associations(start_node):
    node = start_node([], routing=DISCARD_UNMATCHED, receive={"max_associations": 1}, **NO_CLASSIFY)
    first = _associate(node.port)
    assert first.is_established
    try:
        # rejected-transient, service-provider (presentation), local-limit-exceeded
        assert _rejection_codes(_associate(node.port)) == (2, 3, 2)
    finally:
        first.release()
    second = _associate(node.port)
    assert second.is_established
    second.release()


def test_node_receives_over_tls_and_forwards_over_tls(start_node, pki, tmp_path):
    # the destination: a TLS SCP that requires the node's client certificate
    sink_port = None
    stored = []
    ae = AE(ae_title="SINK")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        ssl_context=_server_tls(pki),
        evt_handlers=[(evt.EVT_C_STORE, lambda e: stored.append(e.dataset.SOPInstanceUID) or 0)],
    )
    try:
        sink_port = server.server_address[1]
        destination = {
            "name": "tls-sink", "type": "dicom", "ae_title": "SINK", "host": "127.0.0.1",
            "port": sink_port, "retry_delay_s": 0.5,
            "tls": {
                "certificate": str(pki / "client.pem"),
                "private_key": str(pki / "client.key"),
                "ca_certificates": str(pki / "ca.pem"),
            },
        }  # fmt: skip
        node = start_node(
            [destination],
            receive={"tls": _node_tls(pki), "allowed_callers": ["MODALITY"]},
            **NO_CLASSIFY,
        )
        dicom_file = _ct_file(tmp_path)
        sent = _storescu_tls(pki, "client.key", "client.pem", node.port, dicom_file)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert node.wait_idle(60)
        assert stored == [pydicom.dcmread(dicom_file).SOPInstanceUID]
        refused = _storescu_tls(pki, "rogue-client.key", "rogue-client.pem", node.port, dicom_file)
        assert refused.returncode != 0
        plain = subprocess.run(
            ["echoscu", "-aet", "MODALITY", "-aec", NODE_AE, "127.0.0.1", str(node.port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert plain.returncode != 0  # no plain-TCP fallback on a TLS port
    finally:
        server.shutdown()


def test_health_command_against_a_tls_node_with_an_allow_list(start_node, pki, tmp_path):
    receive = {"tls": _node_tls(pki), "allowed_callers": {"MODALITY": ["192.0.2.0/24"]}}
    node = start_node([], routing=DISCARD_UNMATCHED, receive=receive, **NO_CLASSIFY)
    config_file = tmp_path / "health.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "receive": {**receive, "ae_title": NODE_AE, "host": "127.0.0.1",
                            "port": node.port},
                "spool": {"path": str(node.config.spool.path)},
                "log": {"url": node.config.log.url},
            }
        )
    )  # fmt: skip
    cli = Path(sys.executable).parent / "dicomnode"
    healthy = subprocess.run(
        [str(cli), "health", "--config", str(config_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.startswith("OK echo DICOMNODE@127.0.0.1:")
    assert len(healthy.stdout.strip().splitlines()) == 1
    node.stop()
    down = subprocess.run(
        [str(cli), "health", "--config", str(config_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 1 and down.stdout.startswith("FAIL echo")


def test_config_errors_in_security_sections_name_key_and_line():
    from dicomnode.config import ConfigError
    from dicomnode.config_file import parse_config

    text = "receive:\n  ae_title: DICOMNODE\n  allowed_callers:\n    MODALITY: [not-an-ip]\n"
    with pytest.raises(ConfigError, match=r"<config>:\d+: receive\.allowed_callers.*not-an-ip"):
        parse_config(text)
    with pytest.raises(ConfigError, match=r"<config>:3: receive\.tls\.certfile: unknown key"):
        parse_config("receive:\n  tls:\n    certfile: x.pem\n")
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        parse_config("metrics:\n  enabled: true\n  port: 70000\n")


def test_a_tls_peer_that_never_finishes_its_handshake_locks_no_modality_out(start_node, pki):
    """pynetdicom does the TLS handshake in its accept loop: a peer that connects and says
    nothing (or sends half a ClientHello) would hold that loop, and every modality with it."""
    tls = {"certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
           "ca_certificates": str(pki / "ca.pem")}
    node = start_node([], routing=DISCARD_UNMATCHED, classify={"modalities": []},
                      receive={"tls": tls, "read_timeout_s": 2})
    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(3)]
    half_hello = socket.create_connection(("127.0.0.1", node.port))
    half_hello.sendall(b"\x16\x03\x01\x02\x00\x01")  # a TLS record header, then nothing
    identified = client_ssl_context(TLSSettings(
        certificate=pki / "client.pem", private_key=pki / "client.key",
        ca_certificates=pki / "ca.pem"))
    answered: list[int] = []

    def echo_over_tls() -> None:
        assoc = _associate(node.port, tls_args=(identified, None))
        if assoc.is_established:
            answered.append(int(assoc.send_c_echo().Status))
            assoc.release()

    try:
        started = time.monotonic()
        modality = threading.Thread(target=echo_over_tls, daemon=True)
        modality.start()
        modality.join(15)  # without the fix it hangs for as long as the silent peers stay
        assert not modality.is_alive(), "the stalled handshakes held the accept loop"
        assert answered == [0x0000]
        assert time.monotonic() - started < 5
        for sock in [*silent, half_hello]:  # the handshake deadline closed them
            sock.settimeout(10)
            assert sock.recv(1) == b""
    finally:
        for sock in [*silent, half_hello]:
            sock.close()
