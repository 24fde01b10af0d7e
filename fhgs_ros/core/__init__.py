"""Pure-PyTorch FHGS engine (no ROS imports anywhere below this package)."""
