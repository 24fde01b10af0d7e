"""The parameter table: facts declared once on each field, one validator for every entry point."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fhgs_ros.config import (ConfigError, FHGSConfig, NodeConfig, build_config, default_config_path,
                             default_parameters, live_parameters, load_config, parameter_specs)
from fhgs_ros.core.params import from_dict, walk


def test_every_parameter_has_its_facts_on_the_field():
    specs = parameter_specs()
    assert set(specs) == set(default_parameters())
    for name, spec in specs.items():
        assert spec.doc, name
        if spec.choices:
            assert default_parameters()[name] in spec.choices, name
    # node.* live flags: only node parameters may change while running
    assert live_parameters() and all(k.startswith("node.") for k in live_parameters())
    assert "node.publish_period" in live_parameters() and "mapper.lambda_ext" not in live_parameters()


def test_shipped_yaml_holds_every_parameter_with_its_default():
    doc = yaml.safe_load(default_config_path().read_text())["fhgs_node"]["ros__parameters"]
    flat = {}

    def flatten(d, prefix=""):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                flatten(v, key)
            else:
                flat[key] = v
    flatten(doc)
    defaults = default_parameters()
    assert set(flat) == set(defaults), set(flat) ^ set(defaults)
    for k, v in flat.items():
        want = defaults[k]
        assert (list(v) if isinstance(v, list) else v) == (list(want) if isinstance(want, (list, tuple)) else want), k


@pytest.mark.parametrize("key,value,needle", [
    ("node.publish_period", 1e10, "outside the valid range"),
    ("node.sync_timeout", float("inf"), "not a finite number"),
    ("mapper.lambda_int", 1e39, "not representable as float32"),
    ("node.camera_extrinsic", [0, 0, 0, 0, 0, 0, float("nan")], "not a finite number"),
    ("node.max_keyframes", 2 ** 70, "too large"),
    ("features.extractor", "clip", "not one of"),
])
def test_one_validator_for_ros_yaml_and_cli(tmp_path, key, value, needle):
    flat = dict(default_parameters(), **{key: value})
    with pytest.raises(ConfigError, match=needle):
        build_config(flat)
    section, rest = key.split(".", 1)
    if section != "node":  # the YAML / --set path of the offline tools uses the same checks
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        with pytest.raises(ConfigError, match=needle):
            load_config(None, nested)


def test_round_trip_through_the_table():
    cfg, node = build_config(default_parameters())
    assert cfg == FHGSConfig() and node == NodeConfig()
    leaves = list(walk(FHGSConfig()))
    assert all(isinstance(f, dataclasses.Field) for _, f, _ in leaves)
    assert from_dict(NodeConfig, {"queue_size": 3}, "node").queue_size == 3
