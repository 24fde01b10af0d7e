"""Dataset loaders and the synthetic labelled scene (numpy/PyTorch only, no ROS)."""
