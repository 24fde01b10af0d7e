"""ros2 launch fhgs_ros fhgs_mapping.launch.py [params_file:=...] [namespace:=...] [use_sim_time:=true]
                                            [sam_checkpoint:=/path/sam_vit_h_4b8939.pth] [sam_model:=vit_h]
                                            [sam2_checkpoint:=/path/sam2.1_hiera_tiny.pt] [sam2_model:=hiera_t]
                                            [map_path:=~/maps/site.safetensors] [rviz:=true]

Starts the FHGS mapping node (console script ``fhgs-node``) with the parameter file (default: the
installed ``share/fhgs_ros/config/fhgs.yaml``). ``sam_checkpoint`` (and ``sam_model``) select the
feature model: a non-empty value sets ``features.extractor: sam`` and overrides the file; empty
values leave the file's settings alone. ``sam2_checkpoint`` / ``sam2_model`` do the same for SAM 2.1
(``features.extractor: sam2``). ``rviz:=true`` also opens RViz with config/fhgs.rviz.
Remap the inputs as usual, e.g. from the command line or in a wrapping launch file:
``image:=/camera/color/image_raw camera_info:=/camera/color/camera_info depth:=...``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "fhgs_ros"
EXECUTABLE = "fhgs-node"
NODE_NAME = "fhgs_node"
CONFIG_FILES = ("config/fhgs.yaml", "config/fhgs.rviz")

ARGUMENTS = (
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "fhgs.yaml"]),
     "ROS 2 parameter file of the node (fhgs_node: ros__parameters: ...)"),
    ("namespace", "", "namespace of the node and of its relative topics and services"),
    ("use_sim_time", "false", "use /clock (bag replay, simulation)"),
    ("sam_checkpoint", "", "SAM checkpoint (.pth); non-empty: features.extractor=sam with this file"),
    ("sam_model", "", "SAM model type of the checkpoint (vit_b | vit_l | vit_h); empty: from the parameter file"),
    ("sam2_checkpoint", "", "SAM 2.1 checkpoint (sam2.1_hiera_*.pt); non-empty: features.extractor=sam2 with this file"),
    ("sam2_model", "", "SAM 2.1 model of the checkpoint (hiera_t | hiera_s | hiera_b+ | hiera_l); empty: from the "
                       "parameter file"),
    ("map_path", "", "map file for autosave / resume (node.map_path); empty: from the parameter file"),
    ("rviz", "false", "also start RViz with config/fhgs.rviz"),
)


def _truthy(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "on")


def _setup(context, *args, **kwargs):
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    overrides = {"use_sim_time": _truthy(get("use_sim_time"))}
    if get("sam_checkpoint"):
        overrides["features.extractor"] = "sam"
        overrides["features.sam_checkpoint"] = get("sam_checkpoint")
    if get("sam_model"):
        overrides["features.sam_model"] = get("sam_model")
    if get("sam2_checkpoint"):
        overrides["features.extractor"] = "sam2"
        overrides["features.sam2_checkpoint"] = get("sam2_checkpoint")
    if get("sam2_model"):
        overrides["features.sam2_model"] = get("sam2_model")
    if get("map_path"):
        overrides["node.map_path"] = get("map_path")
    actions = [Node(package=PACKAGE, executable=EXECUTABLE, name=NODE_NAME, namespace=get("namespace"),
                    parameters=[get("params_file"), overrides], output="screen", emulate_tty=True)]
    if _truthy(get("rviz")):
        rviz_config = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "fhgs.rviz"]).perform(context)
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", namespace=get("namespace"),
                            arguments=["-d", rviz_config],
                            parameters=[{"use_sim_time": overrides["use_sim_time"]}], output="screen"))
    return actions


def generate_launch_description() -> LaunchDescription:
    decls = [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
    return LaunchDescription(decls + [OpaqueFunction(function=_setup)])
