"""ROS 2 side of fhgs_ros: the only package that imports rclpy or message types (docs/ARCHITECTURE.md §2).

- ``mapper_node``: the ``fhgs-node`` mapping node (``main()``) around the ROS-free
  ``fhgs_ros.online`` pipeline (engine, frontend, ingest);
- ``replay``: ``fhgs-replay`` (bag -> DDS with /clock, ``--fast`` flow control; ``--offline`` runs
  ``fhgs_ros.online.bag_mapping``); ``node_replay``: node + replayer for the demo;
- ``conversions``: message <-> numpy/torch;
- ``tf``: TF lookups (tf2_ros, or the package's own listener on ``fhgs_ros.online.transforms``);
- ``streamer``: synthetic-scene publisher used by the integration tests and ``fhgs-bench node``;
  ``harness``: node subprocesses, private ROS domains and spinners for tests, demo and benchmarks.
"""
