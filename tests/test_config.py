"""Config: the embedded defaults load; errors name the key, the line and what would be valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.cli import apply_overrides
from dicomnode.config import DEFAULT_CONFIG_PATH, ConfigError
from dicomnode.config_file import load_config, parse_config


def test_embedded_defaults():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.receive.ae_title == "DICOMNODE" and config.receive.port == 11112
    assert config.log.url.startswith("sqlite:///")
    assert [(d.name, d.type) for d in config.destinations] == [("outbox", "folder")]
    assert config.classify.modalities == ["CR", "DX"]
    assert config.tag.la_term == "LL" and config.tag.body_part_defaults == {}
    # Write thresholds: the model manifest's unless the config overrides them.
    assert config.tag.thresholds.model_dump(exclude_none=True) == {}


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "node.yaml")
    return str(info.value)


def test_wrong_value_names_key_line_and_valid_values():
    message = error_of("receive:\n  port: 11112\ntag:\n  la_term: LA\n")
    assert "node.yaml:4: tag.la_term" in message
    assert "'LL'" in message and "'RL'" in message  # what would be valid


def test_rule_labels_are_the_models_classes():
    rule = ("routing:\n  rules:\n    - name: laterals\n      when: {classification: {label: %s}}"
            "\n      destinations: [outbox]\n")
    message = error_of("destinations:\n  - {name: outbox, type: folder, path: /tmp/x}\n"
                       + rule % "LL")
    assert "unknown label 'LL'" in message and "lateral is LAT" in message
    assert "AP, PA, LAT, OTHER" in message


def test_out_of_range_and_type_errors_point_at_their_lines():
    message = error_of(
        "receive:\n  ae_title: DICOMNODE\n  port: 70000\nclassify:\n  workers: many\n"
    )
    assert "node.yaml:3: receive.port" in message and "65535" in message
    assert "node.yaml:5: classify.workers" in message


def test_unknown_key_is_an_error_not_ignored():
    message = error_of("receive:\n  ae_titel: X\n")
    assert "node.yaml:2: receive.ae_titel: unknown key" in message


def test_destination_errors_name_the_list_item():
    text = (
        "destinations:\n"
        "  - name: outbox\n"
        "    type: folder\n"
        "    path: /tmp/x\n"
        "  - name: pacs\n"
        "    type: dicom\n"
        "    ae_title: PACS\n"
        "    host: 127.0.0.1\n"
        "    port: nope\n"
    )
    message = error_of(text)
    assert "node.yaml:9: destinations.1.port" in message
    message = error_of("destinations:\n  - name: x\n    type: ftp\n")
    assert "node.yaml:3: destinations.0" in message and "'dicom', 'folder'" in message
    twice = "  - {name: a, type: folder, path: x}\n"
    message = error_of("destinations:\n" + twice + twice)
    assert "unique" in message and "'a'" in message


def test_not_yaml_and_missing_file(tmp_path: Path):
    assert "not valid YAML" in error_of("receive: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_command_line_overrides_the_file(tmp_path: Path):
    config = apply_overrides(
        load_config(DEFAULT_CONFIG_PATH), host="0.0.0.0", port=104, ae_title="EDGE",
        outbox=tmp_path / "out", db="sqlite:///x.db",
    )  # fmt: skip
    assert (config.receive.host, config.receive.port, config.receive.ae_title) == (
        "0.0.0.0",
        104,
        "EDGE",
    )
    assert config.log.url == "sqlite:///x.db"
    assert [(d.name, str(d.path)) for d in config.destinations] == [
        ("outbox", str(tmp_path / "out"))
    ]


@pytest.mark.parametrize("salt", ["", "change-me", "short-salt", "aaaaaaaaaaaaaaaaaaaa",
                                  "please-change-this-salt"])
def test_hashing_patient_ids_needs_a_secret_salt(salt):
    with pytest.raises(ConfigError, match="patient_id: hash needs patient_id_salt"):
        parse_config(f"log:\n  patient_id: hash\n  patient_id_salt: '{salt}'\n", "node.yaml")
    parse_config("log:\n  patient_id: hash\n  patient_id_salt: 9c1f4e7a2b6d3a80f5\n", "node.yaml")


@pytest.mark.parametrize(("text", "wanted"), [
    ("receive:\n  port: [1\n", ['not valid YAML', 'in "node.yaml", line 2']),
    ("receive:\n  port: 5\nreceive:\n  ae_title: X\n",
     ["duplicate key 'receive' (first on line 1)", 'in "node.yaml", line 3']),
    ("recieve:\n  port: 5\n", ["node.yaml:1: recieve: unknown key; did you mean 'receive'?"]),
    ("receive:\n  prot: 5\n", ["node.yaml:2: receive.prot: unknown key; did you mean 'port'?"]),
    ("destinations:\n  - {name: a, type: dicom, ae_titel: X, host: h, port: 1}\n",
     ["destinations.0.ae_titel: unknown key; did you mean 'ae_title'?"]),
    ("receive:\n  allowed_callers: {MOD: 5}\n",
     ["node.yaml:2: receive.allowed_callers: Value error, expected a list of calling AE titles"]),
])  # fmt: skip
def test_config_errors_name_the_file_line_and_fix(text, wanted):
    with pytest.raises(ConfigError) as error:
        parse_config(text, "node.yaml")
    message = str(error.value)
    for part in wanted:
        assert part in message, message
    assert "<unicode string>" not in message and "nullable[" not in message
