"""Segmentation engines behind one interface, their registry, embedding cache, prompts and masks."""
