r"""Classifies videos by text with an X-CLIP checkpoint.

  python -m xclip_jax.classify --checkpoint=k400_32_8.pth --labels=labels/kinetics_400_labels.csv a.mp4 b.mp4
  python -m xclip_jax.classify --checkpoint=CKPT --classes="dancing,cooking,playing guitar" video.mp4

Each video is sampled as the official evaluation does (the centre frame of each of T segments), resized and
centre-cropped to the model's input size, and scored against the class names (used as text, as X-CLIP does).
"""

import pathlib

from absl import app
from absl import flags
import jax
import numpy as np

from input_pipeline import annotations
from input_pipeline import augment
from input_pipeline import sampling
from input_pipeline import video_decode
from xclip_jax import pretrained
from xclip_jax import tokenizer

FLAGS = flags.FLAGS


def load_clip(path, num_frames: int, input_size: int) -> np.ndarray:
  """The evaluation view of one video file: (T, S, S, 3) float32, normalised."""
  data = pathlib.Path(path).read_bytes()
  frames, _ = video_decode.decode_sampled_frames(data, lambda total: sampling.eval_frame_indices(total, num_frames))
  return augment.eval_augment(frames, input_size, num_crops=1).numpy()[0]


def classify(model: pretrained.XCLIPModel, videos, class_names, top_k: int = 5):
  """Returns, per video, the top_k (class name, probability) pairs."""
  text_features = model.encode_text(tokenizer.tokenize(class_names))
  results = []
  for video in videos:
    clip = load_clip(video, model.config.num_frames, model.config.image_resolution)
    probabilities = np.asarray(jax.nn.softmax(model.logits(clip[None], text_features=text_features)[0]))
    best = np.argsort(-probabilities)[:top_k]
    results.append([(class_names[i], float(probabilities[i])) for i in best])
  return results


def main(argv):
  videos = argv[1:]
  if not videos:
    raise app.UsageError("name at least one video file")
  if (FLAGS.labels is None) == (FLAGS.classes is None):
    raise app.UsageError("pass exactly one of --labels and --classes")
  class_names = annotations.read_label_list(FLAGS.labels) if FLAGS.labels else FLAGS.classes
  model = pretrained.load_pretrained(FLAGS.checkpoint, num_frames=FLAGS.num_frames)
  for video, top in zip(videos, classify(model, videos, class_names, FLAGS.top_k)):
    print(video)
    for name, probability in top:
      print(f"  {probability:7.2%}  {name}")


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_string("checkpoint", None, "Any checkpoint `load_pretrained` reads.", required=True)
  flags.DEFINE_string("labels", None, "An `id,name` CSV of class names.")
  flags.DEFINE_list("classes", None, "Comma-separated class names (instead of --labels).")
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).")
  flags.DEFINE_integer("top_k", 5, "Classes to print per video.")


def run():
  """The console entry point."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
