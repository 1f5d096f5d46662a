"""The pixel normalisation of every pipeline (training, evaluation, classify, export), in one place.

X-CLIP normalises 0-255 RGB values with ImageNet's mean and standard deviation scaled to 0-255 (`img_norm_cfg` in the
official datasets/build.py), not with OpenAI CLIP's own 0-1 values. This module imports nothing, so that classify and
the exported models get the constants without TensorFlow.
"""

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
