"""Routing rules: semantics on real datasets, config errors naming rule/key/line, the `rules`
CLI, and the decision stored with the instance in the log (in-process node, real SCPs)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.config import ConfigError
from dicomnode.config_file import parse_config
from dicomnode.logdb.entry import InstanceLogEntry
from dicomnode.route import DEFAULT_RULE, route
from tests.node_helpers import instance_rows, send_files
from tests.shared_data import SHARED

CORPUS = SHARED / "dicom" / "corpus" / "files"
CR_LL = CORPUS / "CR__77654033_CR1_6154.dcm"  # ViewPosition LL
MR = CORPUS / "MR__MR_small_implicit.dcm"
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "routing-example.yaml"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not at {SHARED}")

DESTS = """
destinations:
  - {name: pacs, type: folder, path: /tmp/never-written/pacs}
  - {name: research, type: folder, path: /tmp/never-written/research}
  - {name: review, type: folder, path: /tmp/never-written/review}
"""


def entry_for(ds: pydicom.Dataset | None, **fields: object) -> InstanceLogEntry:
    base = dict(
        received_at=datetime.now(timezone.utc), calling_ae="MODALITY", called_ae="DICOMNODE",
        peer_address="10.1.2.3:40000", sop_class_uid="", sop_instance_uid="1.2.3",
        study_instance_uid=None, series_instance_uid=None,
        modality=str(ds.Modality) if ds is not None else None, patient_id=None,
        transfer_syntax_uid=None, action="skipped",
    )  # fmt: skip
    base.update(fields)
    return InstanceLogEntry(**base)  # type: ignore[arg-type]


def config_with(rules: str, default: str = "") -> object:
    return parse_config(DESTS + "routing:\n  rules:\n" + rules + default, "r.yaml")


def test_first_match_wins_and_continue_adds_destinations():
    config = config_with("""
    - name: copy-cr-to-research
      when: {attributes: {Modality: CR}}
      destinations: [research]
      continue: true
    - name: laterals
      when: {attributes: {ViewPosition: {one_of: [LL, RL, LATERAL]}}}
      destinations: [pacs]
    - name: never-reached-for-laterals
      destinations: [review]
""")
    cr = pydicom.dcmread(CR_LL)
    decision = route(config, entry_for(cr), cr)
    assert decision.rules == ["copy-cr-to-research", "laterals"]
    assert decision.destinations == ["research", "pacs"]
    mr = pydicom.dcmread(MR)
    decision = route(config, entry_for(mr), mr)
    assert decision.rules == ["never-reached-for-laterals"] and decision.destinations == ["review"]


def test_default_applies_when_nothing_stops_and_discard_sends_nowhere():
    config = config_with("""
    - name: drop-mr
      when: {attributes: {Modality: MR}}
      action: discard
    - name: also-research
      when: {calling_ae: {glob: "MOD*"}}
      destinations: [research]
      continue: true
""", "  default: {destinations: [pacs]}\n")  # fmt: skip
    mr, cr = pydicom.dcmread(MR), pydicom.dcmread(CR_LL)
    dropped = route(config, entry_for(mr), mr)
    assert (dropped.destinations, dropped.action, dropped.rules) == ([], "discard", ["drop-mr"])
    kept = route(config, entry_for(cr), cr)
    assert kept.destinations == ["research", "pacs"]
    assert kept.rules == ["also-research", DEFAULT_RULE]
    other = route(config, entry_for(cr, calling_ae="CT1"), cr)
    assert other.destinations == ["pacs"] and other.rules == [DEFAULT_RULE]


def test_conditions_peer_network_numbers_regex_presence_and_classification():
    config = config_with("""
    - name: from-ward-network
      when: {peer_address: {network: 10.1.0.0/16}, attributes: {Rows: {ge: 1}}}
      destinations: [pacs]
      continue: true
    - name: no-body-part
      when: {attributes: {BodyPartExamined: {present: false}, PatientID: {regex: "^[0-9]+$"}}}
      destinations: [research]
      continue: true
    - name: unsure-laterals
      when: {classification: {label: LAT, confidence_below: 0.9, action: [uncertain, disagrees]}}
      destinations: [review]
""")
    cr = pydicom.dcmread(CR_LL)
    cr.PatientID = "12345"
    if "BodyPartExamined" in cr:
        del cr.BodyPartExamined
    uncertain = entry_for(cr, label="LAT", confidence=0.7, action="uncertain")
    decision = route(config, uncertain, cr)
    assert decision.rules == ["from-ward-network", "no-body-part", "unsure-laterals"]
    assert decision.destinations == ["pacs", "research", "review"]
    sure = entry_for(cr, label="LAT", confidence=0.97, action="agrees", peer_address="192.0.2.1:5")
    cr.BodyPartExamined = "CHEST"
    decision = route(config, sure, cr)
    assert decision.rules == [DEFAULT_RULE]  # no rule holds: the default (every destination)
    assert decision.destinations == ["pacs", "research", "review"]
    unreadable = route(config, entry_for(None, action="unreadable"), None)
    assert "no-body-part" not in unreadable.rules  # PatientID regex cannot hold without a dataset


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ("    - name: typo\n      destinations: [pacz]\n",
         ["r.yaml:", 'routing.rules.0.destinations.0 (rule "typo")', "unknown destination 'pacz'",
          "valid: pacs, research, review"]),
        ("    - name: badkw\n      when: {attributes: {Modalty: CR}}\n      destinations: [pacs]\n",
         ['(rule "badkw")', "not DICOM keywords: ['Modalty']"]),
        ("    - name: badre\n      when: {called_ae: {regex: '('}}\n      destinations: [pacs]\n",
         ['routing.rules.0.when.called_ae.regex (rule "badre")', "not a valid regular expression"]),
        ("    - name: nodest\n      action: forward\n",
         ['(rule "nodest")', "needs destinations"]),
        ("    - name: badop\n      when: {attributes: {Rows: {bigger: 3}}}\n"
         "      destinations: [pacs]\n",
         ['routing.rules.0.when.attributes.Rows.bigger (rule "badop")', "unknown key"]),
    ],
)  # fmt: skip
def test_config_errors_name_rule_key_and_line(rules: str, expected: list[str]):
    with pytest.raises(ConfigError) as info:
        config_with(rules)
    message = str(info.value)
    for part in expected:
        assert part in message, message
    line = int(message.split("r.yaml:")[1].split(":")[0])
    first_rule_line = len((DESTS + "routing:\n  rules:\n").splitlines()) + 1
    assert first_rule_line <= line < first_rule_line + len(rules.splitlines())


def test_rules_check_and_test_commands(tmp_path: Path):
    runner = CliRunner()
    checked = runner.invoke(app, ["rules", "check", str(EXAMPLE)])
    assert checked.exit_code == 0, checked.output
    assert "valid;" in checked.output and "default:" in checked.output
    assumed = ["--label", "LAT", "--confidence", "0.6", "--action", "uncertain"]
    tested = runner.invoke(app, ["rules", "test", str(EXAMPLE), str(CR_LL), *assumed])
    assert tested.exit_code == 0, tested.output
    # CR_LL is a C-spine CR: not the chest research copy; uncertain -> pacs + review
    assert "no research-copy-of-chest-radiographs: attributes.BodyPartExamined" in tested.output
    assert "YES unsure-views-to-review" in tested.output
    assert "=> forward -> pacs, review (rules: unsure-views-to-review)" in tested.output
    plain = runner.invoke(app, ["rules", "test", str(EXAMPLE), str(MR)])
    assert "=> forward -> pacs (rules: (default))" in plain.output, plain.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(DESTS + "routing:\n  rules:\n    - name: oops\n      destinations: [pax]\n")
    failed = runner.invoke(app, ["rules", "check", str(bad)])
    assert failed.exit_code == 2
    # line 9 holds the rule's destinations
    assert f"{bad}:9:" in failed.output and '(rule "oops")' in failed.output


def test_routing_decision_is_logged_and_followed(start_node, recording_scp, tmp_path):
    from tests.node_helpers import RecordingSCP

    other = RecordingSCP(ae_title="OTHER").start()
    try:
        rules = {
            "rules": [
                {"name": "cr-to-sink", "when": {"attributes": {"Modality": "CR"}},
                 "destinations": ["sink"]},
                {"name": "mr-dropped", "when": {"attributes": {"Modality": "MR"}},
                 "action": "discard"},
            ],
            "default": {"destinations": ["other"]},
        }  # fmt: skip
        node = start_node(
            [recording_scp.destination("sink"), other.destination("other")],
            routing=rules,
            classify={"modalities": []},
            disk={"min_free_mb": 0},
        )
        ct = CORPUS / "CT__693_J2KI.dcm"
        assert send_files(node.port, CR_LL, MR, ct) == [0, 0, 0]
        assert node.wait_idle(30)
        recording_scp.wait_for(1)
        other.wait_for(1)
        rows = {r.modality: r.routing for r in instance_rows(node)}
        assert rows["CR"] == {"rules": ["cr-to-sink"], "destinations": ["sink"],
                              "action": "forward"}  # fmt: skip
        assert rows["MR"] == {"rules": ["mr-dropped"], "destinations": [], "action": "discard"}
        assert rows["CT"]["destinations"] == ["other"] and rows["CT"]["rules"] == [DEFAULT_RULE]
        assert [r.sop_instance_uid for r in recording_scp.received] == [
            str(pydicom.dcmread(CR_LL).SOPInstanceUID)
        ]
        assert len(other.received) == 1
    finally:
        other.stop()
