"""Synthetic labeled samples by diffusion inpainting."""
