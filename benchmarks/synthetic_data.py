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

from input_pipeline import annotations


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


# Single-token words: two of them name a class uniquely (32 x 32 names), more make it longer.
_WORDS = (  # noqa: SIM905 (a list of 32 strings, one per line)
  "red blue green black white brown pink grey gold dark light small big tall short long "
  "fast slow old new hot cold wet dry soft hard loud quiet happy sad early late"
).split()
# The Kinetics-400 names' token lengths (the start and end tokens included, rounded up to 4 as the text tower runs
# them): 279 of 4 tokens, 116 of 8, 5 of 12; a name of n words takes n + 2.
_KINETICS_400_LENGTHS = {2: 279, 6: 116, 10: 5}


def write_label_list(path, num_classes: int) -> pathlib.Path:
  """Writes an `id,name` CSV of num_classes generated names; returns its path.

  Their token lengths come in the shares of the Kinetics-400 names' (at 400 classes the same counts), so that
  encoding them costs what encoding those does, whether the texts are encoded together at the longest's length
  (training) or in groups of one length (`XCLIPModel.encode_text`).
  """
  if not 1 <= num_classes <= len(_WORDS) ** 2:
    raise ValueError(f"between 1 and {len(_WORDS) ** 2} generated class names, not {num_classes}")
  longest = max(_KINETICS_400_LENGTHS)
  counts = {n: round(num_classes * c / 400) for n, c in _KINETICS_400_LENGTHS.items() if n != longest}
  counts[longest] = num_classes - sum(counts.values())
  words = [n for n, count in sorted(counts.items()) for _ in range(count)]
  names = [" ".join([_WORDS[i // len(_WORDS)], _WORDS[i % len(_WORDS)], *_WORDS[: n - 2]]) for i, n in enumerate(words)]
  path = pathlib.Path(path)
  annotations.write_label_list(path, names)
  return path
