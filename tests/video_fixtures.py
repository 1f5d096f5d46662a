"""Writes small synthetic videos whose frames tell their own index.

Frame i of a video from write_indexed_video is a flat grey image of level
frame_level(i); frame_index_of(frame) reads the index back after lossy
coding. write_textured_video makes benchmark-like footage instead.
"""

import os
import pathlib
import tarfile

import av
import numpy as np

_LEVEL_OFFSET = 8
_LEVEL_STEP = 4
MAX_INDEXED_FRAMES = (255 - _LEVEL_OFFSET) // _LEVEL_STEP + 1
_EMPTY_HEIGHT, _EMPTY_WIDTH = 48, 64


def frame_level(index: int) -> int:
  """Grey level of frame `index` of an indexed video."""
  return _LEVEL_OFFSET + _LEVEL_STEP * index


def frame_index_of(frame: np.ndarray) -> int:
  """Index of a decoded frame of an indexed video (from its mean level)."""
  return int(round((float(np.mean(frame)) - _LEVEL_OFFSET) / _LEVEL_STEP))


def _write(path, frames, fps, codec, keyframe_interval, bit_rate=None):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2] if frames else (_EMPTY_HEIGHT, _EMPTY_WIDTH)
    stream.pix_fmt = "yuv420p"
    if bit_rate:
      stream.bit_rate = bit_rate
    if keyframe_interval:
      stream.codec_context.gop_size = keyframe_interval
    # Writes the header even when no frame follows (a zero-frame video).
    container.start_encoding()
    for image in frames:
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return path


def write_indexed_video(
  path,
  num_frames: int,
  width: int = 64,
  height: int = 48,
  fps: int = 30,
  codec: str = "libx264",
  keyframe_interval: int | None = None,
):
  """Writes a video whose frame i is flat grey at frame_level(i).

  With codec libx264 the stream has B-frames, so decode order differs from
  display order; keyframe_interval makes several keyframes (for seeking).
  num_frames=0 writes a container with a video stream but no frames.
  """
  if num_frames > MAX_INDEXED_FRAMES:
    raise ValueError(f"at most {MAX_INDEXED_FRAMES} indexed frames")
  frames = [np.full((height, width, 3), frame_level(i), np.uint8) for i in range(num_frames)]
  # High quality, so that flat grey levels survive the lossy coding.
  return _write(path, frames, fps, codec, keyframe_interval, bit_rate=4_000_000)


def write_textured_video(
  path, num_frames: int = 300, width: int = 340, height: int = 256, fps: int = 30, seed: int = 0
):
  """Writes moving smooth patterns with mild noise, like camera footage.

  At the default size this is a 10 s, 340x256, 30 fps H.264 mp4 of about
  0.5 MB, the shape of the Kinetics videos the official recipe reads.
  """
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
  return _write(path, frames, fps, "libx264", None)


def write_tar(tar_path, folder, relative_paths):
  """Writes an uncompressed tar of folder/relative_path under relative_path."""
  with tarfile.open(tar_path, "w") as tar:
    for relative_path in relative_paths:
      tar.add(os.path.join(folder, relative_path), arcname=relative_path)
  return pathlib.Path(tar_path)
