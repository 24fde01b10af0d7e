"""ros2 launch fhgs_ros fhgs_bag_mapping.launch.py bag:=/data/run1 [rate:=fast] [remap:="FROM:=TO ..."]
                                                [params_file:=...] [extra_params_file:=...]
                                                [sam_checkpoint:=...] [sam_model:=vit_b]
                                                [map_path:=/data/run1_map.safetensors] [rviz:=true]

Maps a recorded ROS 2 bag: starts the FHGS node on sim time and ``fhgs-replay`` playing the bag
into it with /clock. ``rate:=fast`` (default) plays as fast as the mapper accepts frames (flow
control through the node's ``mapper_status``; the node then runs ``node.step_mode: budget`` with
reliable image subscriptions, so the map is reproducible); a number plays at that speed factor.
``remap`` renames bag topics onto the node inputs (``/image``, ``/camera_info``, ``/depth``,
``/labels``, ``/pose``, ``/odom``, ``/tf``), space-separated. ``extra_params_file`` layers a
second parameter file, e.g. the installed ``config/t265.yaml`` for RealSense T265 bags. When the
bag has been played the launch shuts down and the node writes its final save to ``map_path``
(default: ``<bag>_map.safetensors``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackagePrefix, FindPackageShare

PACKAGE = "fhgs_ros"
NODE_EXECUTABLE = "fhgs-node"
REPLAY_EXECUTABLE = "fhgs-replay"
NODE_NAME = "fhgs_node"

ARGUMENTS = (
    ("bag", "", "ROS 2 bag folder or file to map (sqlite3 or mcap)"),
    ("rate", "fast", "'fast' (flow control, no drops, reproducible) or a playback speed factor such as 1.0"),
    ("remap", "", "space-separated bag topic remaps FROM:=TO onto the node inputs, e.g. /cam/image_raw:=/image"),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "fhgs.yaml"]),
     "ROS 2 parameter file of the node"),
    ("extra_params_file", "", "second parameter file layered on params_file (e.g. config/t265.yaml)"),
    ("sam_checkpoint", "", "SAM checkpoint (.pth); non-empty: features.extractor=sam with this file"),
    ("sam_model", "", "SAM model type of the checkpoint (vit_b | vit_l | vit_h)"),
    ("map_path", "", "map file written at the end (node.map_path); empty: <bag>_map.safetensors"),
    ("rviz", "false", "also start RViz with config/fhgs.rviz"),
)


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def _setup(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    bag = get("bag").rstrip("/")
    if not bag:
        raise RuntimeError("fhgs_bag_mapping.launch.py: the 'bag' argument is required (bag:=/path/to/bag)")
    fast = get("rate").strip().lower() in ("", "fast")
    overrides = {"use_sim_time": True, "node.map_path": get("map_path") or bag + "_map.safetensors",
                 "node.autosave_every_keyframes": 0, "node.autosave_period": 0.0}
    if fast:
        overrides.update({"node.step_mode": "budget", "node.sensor_qos": "reliable"})
    if get("sam_checkpoint"):
        overrides["features.extractor"] = "sam"
        overrides["features.sam_checkpoint"] = get("sam_checkpoint")
    if get("sam_model"):
        overrides["features.sam_model"] = get("sam_model")
    params = [get("params_file")] + ([get("extra_params_file")] if get("extra_params_file") else []) + [overrides]
    node = Node(package=PACKAGE, executable=NODE_EXECUTABLE, name=NODE_NAME, parameters=params, output="screen",
                emulate_tty=True)
    replay_exe = PathJoinSubstitution([FindPackagePrefix(PACKAGE), "lib", PACKAGE, REPLAY_EXECUTABLE]).perform(context)
    cmd = [replay_exe, bag, "--wait", "600"] + (["--fast"] if fast else ["--rate", get("rate")])
    remaps = get("remap").split()
    if remaps:
        cmd += ["--remap", *remaps]
    replay = ExecuteProcess(cmd=cmd, name="fhgs_replay", output="screen")
    done = RegisterEventHandler(event_handler=OnProcessExit(target_action=replay, on_exit=[
        EmitEvent(event=Shutdown(reason="bag played; fhgs_node saves the map on shutdown"))]))
    actions = [node, replay, done]
    if _truthy(get("rviz")):
        rviz_config = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "fhgs.rviz"]).perform(context)
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config],
                            parameters=[{"use_sim_time": True}], output="screen"))
    return actions


def generate_launch_description() -> LaunchDescription:
    decls = [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
    return LaunchDescription(decls + [OpaqueFunction(function=_setup)])
