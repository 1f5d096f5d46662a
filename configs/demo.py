r"""The demo: a small X-CLIP trained from scratch on videos it makes itself, in a few minutes on a laptop CPU.

  python -m xclip_jax.main --config=configs/demo.py --workdir=runs/demo

The first run writes the data to WORKDIR/demo_data (`input_pipeline.demo_data`: six kinds of motion, each drawn with a
random direction, shape, colour, size, position, speed and background; train, validation and held-out test splits
from disjoint seeds), and `data.*` are set to those files. Then the same pipeline, sharding, checkpoints, metrics and
evaluation as every other config: train from a random initialisation, text tower included (there are no CLIP weights
offline), evaluate the final model on the held-out test split (4 clips x 3 crops), and evaluate it again on the test
videos with one frame repeated (`single_frame_top1`): with no motion left to see, that control falls to chance,
which shows that the frames are compared (message tokens, MIT), not looked at one by one.

The augmentations are the official ones: crops, flips and colour changes (one draw per clip, so a shape getting
brighter still does) keep every label here; Mixup and CutMix are off, since a blend of two kinds of motion is neither.
Arguments: small (a few videos and steps, for the tests).
"""

import ml_collections

from configs import common
from input_pipeline import demo_data


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, small=False)
  config = common.experiment_config()
  config.arch = ""  # no CLIP backbone: `model` gives the architecture
  with config.unlocked():  # the fields only this config has
    config.model = ml_collections.ConfigDict(
      dict(
        embed_dim=192,
        image_resolution=32,
        vision_layers=3,
        vision_width=96,
        vision_patch_size=8,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
        mit_layers=2,
        prompts_layers=1,
      )
    )
    # The generated data (see input_pipeline.demo_data); `prepare` fills in data.* and the control list.
    config.demo = ml_collections.ConfigDict(dict(num_train=1200, num_val=120, num_test=300, seed=0))
  config.input_size = config.model.image_resolution
  config.num_frames = 4
  config.num_classes = len(demo_data.CLASS_NAMES)

  config.freeze_text = False
  # Mixup and CutMix blend two videos and their labels; a blend of two kinds of motion is neither.
  config.mixup = 0.0
  config.cutmix = 0.0
  config.lr = 2e-4
  config.weight_decay = 0.05
  config.batch_size = 16
  config.epochs = 16
  config.warmup_epochs = 2
  config.eval_batch_size = 60
  config.eval_every_epochs = 8
  config.log_every_steps = 25
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 1

  if options["small"]:
    config.model.vision_layers = 1
    config.model.transformer_layers = 1
    config.num_frames = 4
    config.demo.update(num_train=12, num_val=6, num_test=6)
    config.batch_size = 4
    config.epochs = 2
    config.warmup_epochs = 1
    config.eval_batch_size = 6
    config.eval_every_epochs = 1
    config.log_every_steps = 1
    config.final_eval_clips = 1
    config.final_eval_crops = 1
  return config.lock()
