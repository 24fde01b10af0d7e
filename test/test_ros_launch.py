"""launch/fhgs_mapping.launch.py, launch/fhgs_bag_mapping.launch.py and config/fhgs.rviz, tested without launch / launch_ros (not installable
here): the launch file parses, runs against minimal stand-ins of the launch_ros API, declares the
documented arguments, starts the ``fhgs-node`` console script of this package with the parameter file
and the overrides, and every file and executable it names exists. The RViz config names the node's
topics and the map fixed frame."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "fhgs_mapping.launch.py"
BAG_LAUNCH = REPO / "launch" / "fhgs_bag_mapping.launch.py"


class _Sub:
    """Stand-in substitution: records its parts; perform() joins them like the real ones would."""

    def __init__(self, *parts, kind=""):
        self.parts, self.kind = parts, kind

    def perform(self, context):
        if self.kind == "config":
            return context.launch_configurations[self.parts[0]]
        if self.kind == "share":
            return f"/opt/ws/install/{self.parts[0]}/share/{self.parts[0]}"
        if self.kind == "prefix":
            return f"/opt/ws/install/{self.parts[0]}"
        out = []
        for p in self.parts[0]:
            out.append(p.perform(context) if hasattr(p, "perform") else str(p))
        return "/".join(out)


def _stub_modules(monkeypatch):
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    subs = types.ModuleType("launch.substitutions")
    lr = types.ModuleType("launch_ros")
    lr_actions = types.ModuleType("launch_ros.actions")
    lr_subs = types.ModuleType("launch_ros.substitutions")

    class LaunchDescription(list):
        pass

    class DeclareLaunchArgument:
        def __init__(self, name, default_value=None, description=""):
            self.name, self.default_value, self.description = name, default_value, description

    class OpaqueFunction:
        def __init__(self, function):
            self.function = function

    class Node:
        def __init__(self, **kw):
            self.kw = kw

    class Action:  # ExecuteProcess, RegisterEventHandler, EmitEvent, OnProcessExit, Shutdown
        def __init__(self, **kw):
            self.kw = kw

    launch.LaunchDescription = LaunchDescription
    actions.DeclareLaunchArgument, actions.OpaqueFunction = DeclareLaunchArgument, OpaqueFunction
    for name in ("ExecuteProcess", "RegisterEventHandler", "EmitEvent"):
        setattr(actions, name, type(name, (Action,), {}))
    handlers = types.ModuleType("launch.event_handlers")
    handlers.OnProcessExit = type("OnProcessExit", (Action,), {})
    events = types.ModuleType("launch.events")
    events.Shutdown = type("Shutdown", (Action,), {})
    subs.LaunchConfiguration = lambda name: _Sub(name, kind="config")
    subs.PathJoinSubstitution = lambda parts: _Sub(parts)
    lr_actions.Node = Node
    lr_subs.FindPackageShare = lambda pkg: _Sub(pkg, kind="share")
    lr_subs.FindPackagePrefix = lambda pkg: _Sub(pkg, kind="prefix")
    for name, mod in {"launch": launch, "launch.actions": actions, "launch.substitutions": subs, "launch_ros": lr,
                      "launch.event_handlers": handlers, "launch.events": events,
                      "launch_ros.actions": lr_actions, "launch_ros.substitutions": lr_subs}.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _load(monkeypatch, path: Path = LAUNCH):
    _stub_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launch_file_parses_and_uses_the_launch_ros_api():
    tree = ast.parse(LAUNCH.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"launch", "launch.actions", "launch_ros.actions", "launch_ros.substitutions"} <= imported


def test_launch_description_arguments_and_node(monkeypatch):
    mod = _load(monkeypatch)
    ld = mod.generate_launch_description()
    decls = {a.name: a for a in ld if type(a).__name__ == "DeclareLaunchArgument"}
    for name in ("params_file", "namespace", "use_sim_time", "sam_checkpoint", "sam_model", "sam2_checkpoint",
                 "sam2_model", "map_path", "rviz"):
        assert name in decls and decls[name].description
    opaque = [a for a in ld if type(a).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1

    def run(**cfg):
        values = {n: (d.default_value.perform(None) if hasattr(d.default_value, "perform") else d.default_value)
                  for n, d in decls.items()}
        values.update(cfg)
        ctx = types.SimpleNamespace(launch_configurations=values)
        return opaque[0].function(ctx)

    nodes = run()
    assert len(nodes) == 1
    kw = nodes[0].kw
    assert kw["package"] == "fhgs_ros" and kw["executable"] == "fhgs-node" and kw["name"] == "fhgs_node"
    assert kw["parameters"][0] == "/opt/ws/install/fhgs_ros/share/fhgs_ros/config/fhgs.yaml"
    assert kw["parameters"][1] == {"use_sim_time": False}
    nodes = run(namespace="robot1", use_sim_time="true", sam_checkpoint="/data/sam_vit_h.pth", sam_model="vit_h",
                map_path="/data/map.safetensors", rviz="true", params_file="/etc/fhgs.yaml")
    assert [n.kw["executable"] for n in nodes] == ["fhgs-node", "rviz2"]
    kw = nodes[0].kw
    assert kw["namespace"] == "robot1" and kw["parameters"][0] == "/etc/fhgs.yaml"
    assert kw["parameters"][1] == {"use_sim_time": True, "features.extractor": "sam",
                                   "features.sam_checkpoint": "/data/sam_vit_h.pth", "features.sam_model": "vit_h",
                                   "node.map_path": "/data/map.safetensors"}
    assert nodes[1].kw["arguments"][-1].endswith("share/fhgs_ros/config/fhgs.rviz")
    assert nodes[1].kw["namespace"] == "robot1"
    # every override is a declared node parameter
    from fhgs_ros.config import default_parameters
    assert set(kw["parameters"][1]) - {"use_sim_time"} <= set(default_parameters())
    kw2 = run(sam2_checkpoint="/data/sam2.1_hiera_tiny.pt", sam2_model="hiera_t")[0].kw
    assert kw2["parameters"][1] == {"use_sim_time": False, "features.extractor": "sam2",
                                    "features.sam2_checkpoint": "/data/sam2.1_hiera_tiny.pt",
                                    "features.sam2_model": "hiera_t"}
    assert set(kw2["parameters"][1]) - {"use_sim_time"} <= set(default_parameters())


def test_launch_file_names_existing_executables_and_files(monkeypatch):
    mod = _load(monkeypatch)
    for rel in mod.CONFIG_FILES:
        assert (REPO / rel).is_file(), rel
    setup = (REPO / "setup.py").read_text()
    assert re.search(r'"fhgs-node\s*=\s*fhgs_ros\.ros\.mapper_node:main"', setup)
    assert '"share/fhgs_ros/launch", glob("launch/*.py")' in setup and 'glob("config/*")' in setup
    from fhgs_ros.ros import mapper_node
    assert callable(mapper_node.main)
    pkg = (REPO / "package.xml").read_text()
    assert "<name>fhgs_ros</name>" in pkg and "launch_ros" in pkg


def test_rviz_config_displays_topics_and_fixed_frame():
    doc = yaml.safe_load((REPO / "config" / "fhgs.rviz").read_text())
    vm = doc["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "map"
    topics = {}
    for d in vm["Displays"]:
        t = d.get("Topic")
        if isinstance(t, dict):
            topics.setdefault(t["Value"], set()).add(d["Class"])
    assert "rviz_default_plugins/PointCloud2" in topics["map/points"]
    assert topics["map/mesh"] == {"rviz_default_plugins/Marker"}
    assert "rviz_default_plugins/PointCloud2" in topics["query/points"]
    assert topics["query/markers"] == {"rviz_default_plugins/MarkerArray"}
    for t in ("render/rgb", "render/depth", "render/normal", "render/features_pca"):
        assert topics[t] == {"rviz_default_plugins/Image"}
    tools = {t["Class"]: t for t in vm["Tools"]}
    assert tools["rviz_default_plugins/PublishPoint"]["Topic"]["Value"] == "/clicked_point"
    # the topics RViz shows are the ones the node publishes
    src = (REPO / "fhgs_ros" / "ros" / "mapper_node.py").read_text()
    for t in topics:
        assert f'"{t}"' in src, t


def test_bag_mapping_launch_starts_node_on_sim_time_and_the_replayer(monkeypatch):
    mod = _load(monkeypatch, BAG_LAUNCH)
    ld = mod.generate_launch_description()
    decls = {a.name: a for a in ld if type(a).__name__ == "DeclareLaunchArgument"}
    for name in ("bag", "rate", "remap", "params_file", "extra_params_file", "sam_checkpoint", "map_path", "rviz"):
        assert name in decls and decls[name].description
    opaque = [a for a in ld if type(a).__name__ == "OpaqueFunction"][0]

    def run(**cfg):
        values = {n: (d.default_value.perform(None) if hasattr(d.default_value, "perform") else d.default_value)
                  for n, d in decls.items()}
        values.update(cfg)
        return opaque.function(types.SimpleNamespace(launch_configurations=values))

    with pytest.raises(RuntimeError, match="'bag' argument is required"):
        run()
    node, replay, handler = run(bag="/data/run1/", remap="/camera/fisheye1/image_raw:=/image /camera/odom/sample:=/odom",
                                extra_params_file="/opt/ws/install/fhgs_ros/share/fhgs_ros/config/t265.yaml",
                                sam_checkpoint="/data/sam_vit_b.pth")
    kw = node.kw
    assert kw["executable"] == "fhgs-node" and kw["parameters"][1].endswith("config/t265.yaml")
    ov = kw["parameters"][2]
    assert ov["use_sim_time"] is True and ov["node.step_mode"] == "budget" and ov["node.sensor_qos"] == "reliable"
    assert ov["node.map_path"] == "/data/run1_map.safetensors" and ov["features.extractor"] == "sam"
    from fhgs_ros.config import default_parameters
    assert set(ov) - {"use_sim_time"} <= set(default_parameters())
    cmd = replay.kw["cmd"]
    assert cmd[0] == "/opt/ws/install/fhgs_ros/lib/fhgs_ros/fhgs-replay" and cmd[1] == "/data/run1"
    assert "--fast" in cmd and cmd[cmd.index("--remap") + 1:] == ["/camera/fisheye1/image_raw:=/image",
                                                                  "/camera/odom/sample:=/odom"]
    # the replayer accepts exactly these arguments
    from fhgs_ros.ros.replay import build_parser
    a = build_parser().parse_args(cmd[1:])
    assert a.fast and a.remap == ["/camera/fisheye1/image_raw:=/image", "/camera/odom/sample:=/odom"]
    assert handler.kw["event_handler"].kw["target_action"] is replay
    # a playback rate instead of --fast: no budget mode
    node, replay, _ = run(bag="/data/run1", rate="2.0")
    assert "node.step_mode" not in node.kw["parameters"][-1]
    assert replay.kw["cmd"][-2:] == ["--rate", "2.0"]
    setup = (REPO / "setup.py").read_text()
    assert re.search(r'"fhgs-replay\s*=\s*fhgs_ros\.ros\.replay:main"', setup)
    assert (REPO / "config" / "t265.yaml").is_file() and (REPO / "config" / "t265_fisheye1.yaml").is_file()
