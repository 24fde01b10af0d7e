"""ROS 2 side of fhgs_ros: the only package that imports rclpy or message types.

- ``mapper_node``: the ``fhgs-node`` mapping node (``main()``);
- ``ingest``: the input pipeline (decode, validate, sync, account for every image), shared by the node
  and the batch bag mapper;
- ``engine``: the ROS-free online mapping engine (frontend, optimizer and saver threads; budget mode);
- ``replay``: ``fhgs-replay`` (bag -> DDS with /clock, ``--fast`` flow control; ``--offline``);
  ``bag_mapping``: in-process batch mapping of a bag; ``node_replay``: node + replayer for the demo;
- ``calibration``: CameraInfo from calibration files (ROS YAML, kapture, COLMAP);
- ``conversions``: message <-> numpy/torch; ``imageproc``: ROS-free decoding, undistortion, poses;
- ``sync``: approximate time synchronization; ``tf``: TF lookups (tf2_ros or the package's own listener);
- ``params``: the node's parameters (``node:`` section) and their declaration/validation;
- ``streamer``: synthetic-scene publisher used by the integration tests and ``fhgs-bench node``;
  ``harness``: node subprocesses, private ROS domains and spinners for tests, demo and benchmarks.
"""
