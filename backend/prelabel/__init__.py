"""Pre-labeling without clicks: detector boxes from the config's categories, masks from the segmenter."""
