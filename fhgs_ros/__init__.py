"""fhgs_ros: Feature-Homogenized Gaussian Splatting (FHGS) mapping for ROS 2.

``fhgs_ros.core``, ``fhgs_ros.features`` and ``fhgs_ros.datasets`` are pure
PyTorch/numpy and never import ROS; ``fhgs_ros.ros`` is the only ROS layer.
"""

__version__ = "0.1.0"
