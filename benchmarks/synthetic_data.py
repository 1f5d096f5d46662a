"""The benchmarks' videos and class names, made on the spot: the benchmarks read no data set.

`write_textured_video` writes camera-like footage (moving smooth patterns with mild noise: every frame differs) with
libx264's default settings, so that its decoding costs what a Kinetics clip's does: at the default size a 10 s,
340x256, 30 fps H.264 mp4 of about 0.5 MB with a keyframe every 250 frames (plus scene cuts), the interval of
Kinetics clips cut and re-encoded with ffmpeg's defaults. The test suite's videos (tests/fixtures/video_fixtures.py)
show the same frames.
"""

import pathlib

import av
import numpy as np


def textured_frames(num_frames: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
  """(height, width, 3) uint8 frames: smooth patterns moving at different speeds, with normal(0, 6) noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, 3)
  frames = []
  for t in range(num_frames):
    red = np.sin((x + 3 * t) / 23.0 + phase[0]) * np.cos((y - 2 * t) / 31.0)
    green = np.sin((0.7 * x - 0.4 * y + 5 * t) / 17.0 + phase[1])
    blue = np.cos(np.hypot(x - width / 2 - 60 * np.sin(t / 20.0), y - height / 2) / 11.0 + phase[2])
    image = 128 + 100 * np.stack([red, green, blue], axis=-1)
    image += rng.normal(0, 6, image.shape)
    frames.append(np.clip(image, 0, 255).astype(np.uint8))
  return frames


def write_textured_video(
  path, num_frames: int = 300, width: int = 340, height: int = 256, fps: int = 30, seed: int = 0
) -> pathlib.Path:
  """Writes textured_frames as an H.264 mp4 (libx264's defaults, yuv420p); returns its path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = height, width
    stream.pix_fmt = "yuv420p"
    for image in textured_frames(num_frames, width, height, seed):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_label_list(path, num_classes: int) -> pathlib.Path:
  """Writes an `id,name` CSV of num_classes generated names; returns its path.

  The text tower runs up to the longest name's end token (rounded up to 4 tokens): up to 1000 classes, these names
  take 12 tokens, as the longest Kinetics-400 names do, so that encoding them costs what encoding those does.
  """
  path = pathlib.Path(path)
  path.write_text("id,name\n" + "".join(f"{i},synthetic action number {i} of the list\n" for i in range(num_classes)))
  return path
