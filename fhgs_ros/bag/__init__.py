"""ROS-free bag I/O on top of the ``rosbags`` library (no rclpy needed).

- :class:`BagReader` reads ROS 2 bags (sqlite3 ``.db3`` / ``.mcap`` folders or bare files) and
  ROS 1 ``.bag`` files, with topic remapping, time windows and clear :class:`BagError` messages.
- :func:`write_frames_bag` / :func:`write_dataset_bag` write posed RGB(-D, labels) frames as a
  ROS 2 bag (Image, CameraInfo, and the camera pose via /tf, PoseStamped or Odometry).
- ``fhgs-bag`` (:mod:`fhgs_ros.bag.convert`): ``convert`` a dataset to a bag, ``info`` on a bag.
"""

from fhgs_ros.bag.reader import BagError, BagMessage, BagReader, TopicInfo, default_typestore, parse_remaps
from fhgs_ros.bag.writer import BagSummary, BagTopics, write_dataset_bag, write_frames_bag

__all__ = ["BagError", "BagMessage", "BagReader", "TopicInfo", "default_typestore", "parse_remaps",
           "BagSummary", "BagTopics", "write_dataset_bag", "write_frames_bag"]
