"""ROS 2 side of fhgs_ros: the only package that imports rclpy or message types.

- ``mapper_node``: the ``fhgs-node`` mapping node (``main()``);
- ``engine``: the ROS-free online mapping engine (frontend, optimizer and saver threads);
- ``conversions``: message <-> numpy/torch; ``imageproc``: ROS-free decoding, undistortion, poses;
- ``sync``: approximate time synchronization; ``tf``: TF lookups (tf2_ros or the package's own listener);
- ``params``: the node's parameters (``node:`` section) and their declaration/validation;
- ``streamer``: synthetic-scene publisher used by the integration tests and ``fhgs-bench node``.
"""
