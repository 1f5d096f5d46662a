"""The demo's data, made on the spot: short H.264 videos of one shape that moves in a way no single frame shows.

Each class is a kind of change over time, whatever its direction (drawn at random per video): a shape sliding (in any
direction), shaking, growing or shrinking, or getting brighter or darker; the background getting brighter or darker;
or nothing changing. Everything a single frame shows (shape, colour, size, position, background) is drawn from the
same distribution for every class, so a model can only tell the classes apart by comparing frames; left from right
is never asked (X-CLIP's only sense of order is the temporal position embedding of MIT). `write` lays the data out as
the official lists are:

  DIR/videos/{train,val,test,test_single_frame}/NNNNN.mp4
  DIR/train.txt, val.txt, test.txt     `relative/path.mp4 label` lines
  DIR/test_single_frame.txt            the test videos with their middle frame repeated: a control with no motion
  DIR/labels.csv                       `id,name`
  DIR/demo_data.json                   the settings (written last: the data is complete when it exists)

Splits are drawn from disjoint seeds: video i of split s comes from the generator seeded with (seed, s, i).
"""

from concurrent import futures
import dataclasses
import json
import logging
import os
import pathlib
import time

import av
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from input_pipeline import annotations
from xclip_jax import paths

CLASS_NAMES = (
  "a shape sliding",
  "a shape growing or shrinking",
  "a shape getting brighter or darker",
  "a shape shaking",
  "the background getting brighter or darker",
  "a shape standing still",
)
SPLITS = ("train", "val", "test")
SINGLE_FRAME = "test_single_frame"
MANIFEST = "demo_data.json"
WIDTH, HEIGHT = 48, 36
FPS = 15
# Lowest luma of a shape at full brightness, so that it stays visible in grey (the colour augmentation's grayscale).
_MIN_SHAPE_LUMA = 130.0
_LUMA = np.array((0.299, 0.587, 0.114), np.float32)


@dataclasses.dataclass(frozen=True)
class Settings:
  num_train: int
  num_val: int
  num_test: int
  seed: int

  def __post_init__(self):
    for split in ("train", "val", "test"):
      if self.count(split) < 1:
        raise ValueError(f"config.demo.num_{split}={self.count(split)} must be at least 1")

  def count(self, split: str) -> int:
    return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  """A fully bright colour (0-255 RGB) whose luma is at least _MIN_SHAPE_LUMA."""
  while True:
    colour = 255.0 * np.clip(rng.uniform(0.0, 1.0, 3) * rng.uniform(0.3, 1.0) + rng.uniform(0.0, 0.6), 0, 1)
    colour *= 255.0 / colour.max()
    if colour @ _LUMA >= _MIN_SHAPE_LUMA:
      return colour.astype(np.float32)


def _background(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """A dark background: a gradient between two colours under a grating."""
  start, end = rng.uniform(0, 80, (2, 3)).astype(np.float32)
  ramp_angle, grating_angle = rng.uniform(0, 2 * np.pi, 2)
  frequency, phase, contrast = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi), rng.uniform(4, 12)
  ramp = ((x * np.cos(ramp_angle) + y * np.sin(ramp_angle)) / max(WIDTH, HEIGHT) + 1) / 2
  grating = np.sin(frequency * (x * np.cos(grating_angle) + y * np.sin(grating_angle)) + phase)
  return start + (end - start) * ramp[..., None] + contrast * grating[..., None]


def _distance(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float) -> np.ndarray:
  """Signed distance (pixels, roughly) from the outline of a shape centred at the origin and turned by `angle`;
  negative inside."""
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = dy * np.cos(angle) - dx * np.sin(angle)
  if shape == "triangle":
    return np.maximum(np.abs(u) * 0.866 + v * 0.5, -v) - 0.6 * radius
  if shape == "bar":
    return np.maximum(np.abs(u) - 1.1 * radius, np.abs(v) - 0.45 * radius)
  if shape == "kite":
    return np.abs(u) / 1.1 + np.abs(v) / 0.55 - radius
  # A half disc.
  return np.maximum(np.hypot(u, v + 0.3 * radius) - 1.1 * radius, -v - 0.3 * radius)


SHAPES = ("triangle", "bar", "kite", "half disc")


def _direction(rng: np.random.Generator) -> np.ndarray:
  angle = rng.uniform(0, 2 * np.pi)
  return np.array([np.sin(angle), np.cos(angle)], np.float32)


def render(label: int, rng: np.random.Generator) -> np.ndarray:
  """The frames (N, HEIGHT, WIDTH, 3) uint8 of one video of class `label`."""
  num_frames = int(rng.integers(16, 25))
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) + 0.5
  background = _background(rng, y, x)
  shape = SHAPES[rng.integers(len(SHAPES))]
  colour = _random_colour(rng)
  # The state at the middle of the video, drawn alike for every class.
  centre = np.array([rng.uniform(13, 23), rng.uniform(17, 31)], np.float32)  # (y, x)
  radius, angle, level = rng.uniform(6.5, 9.5), rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 0.85)
  edge = np.exp(rng.uniform(np.log(0.7), np.log(2.0)))  # pixels from opaque to clear: how sharp the outline is
  # How it changes from the first frame (t = -1/2) to the last (t = 1/2), in a random direction.
  name = CLASS_NAMES[label]
  sign = rng.choice([-1.0, 1.0])
  velocity = rng.uniform(22, 30) * _direction(rng) if name == "a shape sliding" else np.zeros(2, np.float32)
  growth = sign * np.log(rng.uniform(2.4, 3.0)) if name == "a shape growing or shrinking" else 0.0
  brightening = sign * rng.uniform(0.7, 0.9) if name == "a shape getting brighter or darker" else 0.0
  # Shaking: a new offset every frame, a few pixels in any direction.
  shake = rng.uniform(4, 6) if name == "a shape shaking" else 0.0
  lighting = sign * rng.uniform(1.2, 1.6) if name == "the background getting brighter or darker" else 0.0
  # Every frame at once: t (N, 1, 1), the time of each frame, broadcasts against the (HEIGHT, WIDTH) pixels.
  t = np.linspace(-0.5, 0.5, num_frames)[:, None, None]
  # Drawn for every class (zero unless shaking), so that the generator is used alike whatever the class.
  shake_angle = rng.uniform(0, 2 * np.pi, num_frames)[:, None, None]
  shake_y, shake_x = shake * np.stack([np.sin(shake_angle), np.cos(shake_angle)]).astype(np.float32)
  cy = centre[0] + velocity[0] * t + shake_y
  cx = centre[1] + velocity[1] * t + shake_x
  distance = _distance(shape, y - cy, x - cx, radius * np.exp(growth * t), angle)
  alpha = np.clip(0.5 - distance / edge, 0, 1)[..., None]
  t = t[..., None]
  fill = np.clip(colour * (level + brightening * t), 0, 255)
  image = background * (1 + lighting * t) * (1 - alpha) + fill * alpha
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_video(path: pathlib.Path, frames: np.ndarray) -> pathlib.Path:
  """Writes frames (N, H, W, 3) uint8 as an H.264 mp4; returns its path."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), mode="w") as container:
    # cpu-independent: without it x264 gave other bytes for the same frames now and then, even in one process, and
    # reruns of the demo trained on other data.
    options = {"preset": "veryfast", "crf": "18", "threads": "1", "x264-params": "cpu-independent=1"}
    stream = container.add_stream("libx264", rate=FPS, options=options)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for image in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())
  return path


def _write_one(directory: pathlib.Path, split_index: int, index: int, seed: int) -> tuple[str, str, int]:
  """Writes video `index` of a split (and its single-frame copy for the test split); returns paths and label."""
  split = SPLITS[split_index]
  label = index % len(CLASS_NAMES)
  frames = render(label, np.random.default_rng([seed, split_index, index]))
  path = f"{split}/{index:05d}.mp4"
  write_video(directory / "videos" / path, frames)
  control = ""
  if split == "test":
    # The middle frame, as many times as the video has frames: every sampled clip is that one frame.
    control = f"{SINGLE_FRAME}/{index:05d}.mp4"
    write_video(directory / "videos" / control, np.repeat(frames[len(frames) // 2][None], len(frames), axis=0))
  return path, control, label


def write(directory, settings: Settings):
  """Writes the data described in the module docstring to `directory`."""
  directory = pathlib.Path(directory)
  # Drawing and encoding release the GIL for the most part: one thread per core.
  with futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for split_index, split in enumerate(SPLITS):
      written = list(
        pool.map(lambda i: _write_one(directory, split_index, i, settings.seed), range(settings.count(split)))  # noqa: B023
      )
      (directory / f"{split}.txt").write_text("".join(f"{path} {label}\n" for path, _, label in written))
      if split == "test":
        (directory / f"{SINGLE_FRAME}.txt").write_text("".join(f"{copy} {label}\n" for _, copy, label in written))
  annotations.write_label_list(directory / "labels.csv", CLASS_NAMES)
  (directory / MANIFEST).write_text(json.dumps(dataclasses.asdict(settings), indent=1) + "\n")


# The config.data fields that `prepare` sets: the files it writes in WORKDIR/demo_data.
_DATA_FILES = {
  "root": "videos",
  "label_list": "labels.csv",
  "train_file": "train.txt",
  "val_file": "val.txt",
  "test_file": "test.txt",
  "single_frame_file": f"{SINGLE_FRAME}.txt",
}


def prepare(config: ml_collections.ConfigDict, workdir) -> ml_collections.ConfigDict:
  """Writes the demo data to WORKDIR/demo_data unless it is there; returns a copy of `config` whose data.* name it.

  A rerun reuses the data; data made with other settings (`config.demo`) is refused rather than mixed.
  """
  given = [field for field in (*_DATA_FILES, "tfds_dir") if config.data.get(field)]
  if given:
    raise ValueError(
      f"the demo trains on data it makes, so config.data.{given[0]}={config.data[given[0]]} would not be read: for "
      "your own data, start from a config such as configs/k400.py"
    )
  directory = pathlib.Path(workdir).absolute() / "demo_data"
  settings = Settings(**config.demo.to_dict())
  manifest = directory / MANIFEST
  if jax.process_index() == 0 and not manifest.exists():
    start = time.time()
    write(directory, settings)
    logging.info("Wrote the demo data to %s in %.1f s.", directory, time.time() - start)
  multihost_utils.sync_global_devices("demo data written")
  found = paths.read_json(manifest)
  if found != dataclasses.asdict(settings):
    raise ValueError(
      f"{directory} holds demo data made with {found}, but config.demo asks for {dataclasses.asdict(settings)}: "
      "use another workdir"
    )
  config = ml_collections.ConfigDict(config.to_dict())
  for field, name in _DATA_FILES.items():
    config.data[field] = str(directory / name)
  return config
