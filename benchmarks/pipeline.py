r"""Training-clip throughput: mp4s decoded on the fly vs. build_tfds records.

  python -m benchmarks.pipeline [--num_videos=16] [--num_batches=40]

Run from the repository root. Writes --num_videos synthetic 10 s, 340x256,
30 fps H.264 mp4s of about 0.5 MB (benchmarks.synthetic_data:
moving smooth patterns with noise) to a temporary folder. They keep libx264's
default keyframe interval of 250 frames (plus scene cuts), the interval of
Kinetics clips as they are usually cut and re-encoded with ffmpeg's defaults:
a clip whose 8 frames span the video decodes almost all of it. The records
store every frame (short side 256, JPEG quality 90).

Measures training clips per second (8 frames, 224x224, full augmentation,
batches of 8, after warm-up batches) of
(a) video_dataset.make_train_dataset over the mp4 folder,
(b) tfds_dataset.make_train_dataset over the converted records,
and the conversion speed of build_tfds, and prints them as JSON. Where decord
is installed (`pip install decord==0.6.0`; not a dependency of the project) it
also measures (c) the official recipe's shape in one process: decord decoding
of the segment-sampled frames, short-side resize, random crop, flip and
normalisation with PIL/numpy. The issue quotes 7.8 clips/s for the official
pipeline on the 2-core dev machine.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from benchmarks import synthetic_data
from input_pipeline import augment
from input_pipeline import build_tfds
from input_pipeline import normalization
from input_pipeline import sampling
from input_pipeline import tfds_dataset
from input_pipeline import video_dataset
from xclip_jax import console

_BATCH_SIZE = 8
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 16, "Synthetic videos (one batch at least).", lower_bound=_BATCH_SIZE)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Timed batches.", lower_bound=1)
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 4, "Batches read before timing starts.", lower_bound=0)
_NUM_FRAMES = 8
_INPUT_SIZE = 224


def clips_per_second(dataset, num_batches: int, warmup_batches: int) -> float:
  iterator = dataset.as_numpy_iterator()
  for _ in range(warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches * _BATCH_SIZE / (time.perf_counter() - start)


def decord_clips_per_second(paths, num_clips: int) -> float | None:
  """Single-process decord recipe (decode, resize, crop, flip, normalise)."""
  try:
    import decord  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  rng = np.random.default_rng(0)
  mean, std = np.array(normalization.MEAN_RGB), np.array(normalization.STD_RGB)
  scale = augment.resize_scale(_INPUT_SIZE)
  start = time.perf_counter()
  for i in range(num_clips):
    reader = decord.VideoReader(paths[i % len(paths)], num_threads=1)
    indices = sampling.train_frame_indices(len(reader), _NUM_FRAMES, rng)
    frames = reader.get_batch(list(indices)).asnumpy()
    height, width = frames.shape[1:3]
    size = (round(width * scale / min(height, width)), round(height * scale / min(height, width)))
    top = rng.integers(0, size[1] - _INPUT_SIZE + 1)
    left = rng.integers(0, size[0] - _INPUT_SIZE + 1)
    flip = rng.random() < 0.5
    clip = []
    for frame in frames:
      image = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
      image = image[top : top + _INPUT_SIZE, left : left + _INPUT_SIZE]
      clip.append(image[:, ::-1] if flip else image)
    ((np.stack(clip).astype(np.float32) - mean) / std).astype(np.float32)
  return num_clips / (time.perf_counter() - start)


def main(argv):
  del argv
  num_videos = _NUM_VIDEOS.value
  timing = dict(num_batches=_NUM_BATCHES.value, warmup_batches=_WARMUP_BATCHES.value)
  clip = dict(num_frames=_NUM_FRAMES, input_size=_INPUT_SIZE, batch_size=_BATCH_SIZE, seed=0)
  with tempfile.TemporaryDirectory() as workdir:
    video_dir = os.path.join(workdir, "videos")
    annotations = os.path.join(workdir, "train.txt")
    labels = os.path.join(workdir, "labels.csv")
    logging.info("Writing %d videos to %s", num_videos, video_dir)
    with open(annotations, "w") as f:
      for i in range(num_videos):
        synthetic_data.write_textured_video(os.path.join(video_dir, f"{i}.mp4"), seed=i)
        f.write(f"{i}.mp4 {i % 2}\n")
    with open(labels, "w") as f:
      f.write("id,name\n0,even\n1,odd\n")
    mp4_bytes = sum(entry.stat().st_size for entry in os.scandir(video_dir))

    on_the_fly = clips_per_second(video_dataset.make_train_dataset(annotations, video_dir, labels, **clip), **timing)

    decord_recipe = decord_clips_per_second(
      [os.path.join(video_dir, f"{i}.mp4") for i in range(num_videos)], num_clips=_NUM_BATCHES.value * _BATCH_SIZE // 4
    )

    records_dir = os.path.join(workdir, "records")
    start = time.perf_counter()
    builder = build_tfds.build_split(
      annotations_path=annotations,
      root=video_dir,
      labels_path=labels,
      output_dir=records_dir,
      num_workers=os.cpu_count(),
    )
    build_seconds = time.perf_counter() - start
    from_records = clips_per_second(tfds_dataset.make_train_dataset(records_dir, "train", **clip), **timing)

    print(
      json.dumps(
        {
          "cpu_cores": os.cpu_count(),
          "videos": f"{num_videos} x 10 s, 340x256, 30 fps H.264, keyframe every 250 frames",
          "clip": f"{_NUM_FRAMES} frames, {_INPUT_SIZE}x{_INPUT_SIZE}, train augmentation, batches of {_BATCH_SIZE}",
          "on_the_fly_mp4_clips_per_s": round(on_the_fly, 1),
          "tfds_records_clips_per_s": round(from_records, 1),
          "decord_one_process_clips_per_s": (
            round(decord_recipe, 1) if decord_recipe is not None else "not measured: decord is not installed"
          ),
          "build_tfds_videos_per_s": round(num_videos / build_seconds, 2),
          "mp4_mb_per_video": round(mp4_bytes / num_videos / 2**20, 2),
          "record_mb_per_video": round(builder.info.splits["train"].num_bytes / num_videos / 2**20, 2),
        },
        indent=2,
      )
    )


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
