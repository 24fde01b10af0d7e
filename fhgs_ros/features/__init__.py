"""Feature extractors (SAM image encoder, label embeddings) and feature visualisation; no ROS."""
