"""Video input pipeline: sources, decoding, sampling, augmentation, datasets."""
