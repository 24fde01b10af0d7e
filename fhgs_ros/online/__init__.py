"""ROS-free online pipeline (the mapping engine and what it needs); see fhgs_ros/ros for the ROS adapters."""
