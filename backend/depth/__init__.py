"""Depth maps (Depth Anything) stored as task data."""
