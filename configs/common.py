"""Helpers shared by the config files."""

import ml_collections

from xclip_jax.model import config as model_config


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument `key=value,key=value` over typed defaults (as in `configs/model.py:arch=ViT-B/16`).

  Values take the type of their default; a key without a default, a key given twice, or a value of the wrong type, is
  an error.
  """
  values = dict(defaults)
  given = set()
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config argument {item!r} is not key=value (in {arg!r})")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} (in {arg!r}); known: {sorted(defaults)}")
    if key in given:  # `frames=8,frames=16` took the last, silently
      raise ValueError(f"config argument {key!r} is given twice (in {arg!r})")
    given.add(key)
    kind = type(defaults[key])
    if kind is bool:
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
      values[key] = value.lower() in ("true", "1")
    else:
      try:
        values[key] = kind(value)
      except ValueError as error:
        raise ValueError(f"config argument {key}={value!r} is not of type {kind.__name__}") from error
  return values


def experiment_config(*, small: bool = False) -> ml_collections.ConfigDict:
  """Every field of an experiment, with the official X-CLIP defaults (Kinetics-400, ViT-B/32, 8 frames).

  The dataset files set `data`, `num_classes` and what differs from these; `small=True` shrinks the run to
  minutes on a CPU (a few steps, tiny batches) for trying a setup end to end.
  """
  config = ml_collections.ConfigDict()
  config.mode = "train"  # train: fine-tune, then the multi-view evaluation; eval: evaluate init.checkpoint only.
  config.seed = 0  # the official SEED is 1024, but its torch draws are not ours: no value makes the runs alike

  # Initialisation: exactly one of the two for training; `init.checkpoint` for eval. With neither, the model is
  # built from `arch` with the official random initialisation (for trying things out).
  config.init = ml_collections.ConfigDict()
  config.init.clip = ml_collections.FieldReference(
    None, field_type=str
  )  # OpenAI CLIP .pt / state dict, HF CLIPModel dir
  config.init.checkpoint = ml_collections.FieldReference(None, field_type=str)  # anything `load_pretrained` reads
  config.arch = "ViT-B/32"  # checked against the init checkpoint; "" takes whatever backbone the checkpoint has
  config.num_frames = 8
  config.input_size = 224

  # Data: an annotation file of `relative/path.mp4 label` lines, the folder or .tar the paths are relative to,
  # and an `id,name` CSV of the class names. `tfds_dir` instead reads records written by input_pipeline.build_tfds.
  config.data = ml_collections.ConfigDict()
  config.data.root = ""
  config.data.train_file = ""
  config.data.val_file = ""
  config.data.test_file = ""  # a held-out list the final evaluation reads instead of val_file
  # The final evaluation's videos with one frame repeated: a control, at chance where only motion tells the classes
  # apart (configs/demo.py makes one).
  config.data.single_frame_file = ""
  config.data.label_list = ""
  config.data.tfds_dir = ""
  config.data.train_split = "train"
  config.data.val_split = "val"
  config.data.shots = 0  # > 0: train on K videos per class (few-shot), drawn with `seed`
  config.data.max_failure_fraction = 0.01  # share of videos allowed to fail to decode before the run stops
  config.num_classes = 400

  # Optimisation (official defaults: 8 videos per GPU x 8 GPUs x accumulation 4 = 256 per optimiser step).
  config.lr = 8e-6
  config.weight_decay = 1e-3
  # Message tokens, MIT and prompts, new on top of CLIP, learn this many times faster
  # (xclip_jax.train.optimizer.lr_multiplier_rules).
  config.new_modules_lr_multiplier = 10.0
  config.epochs = 30
  config.warmup_epochs = 5
  config.steps_per_epoch = ml_collections.FieldReference(None, field_type=int)  # None: train videos // batch_size
  config.batch_size = 256  # global, per optimiser step
  config.accumulation_steps = 1  # micro-batches per step: the same step in less memory
  config.freeze_text = True
  config.label_smoothing = 0.1
  config.mixup = 0.8
  config.cutmix = 1.0
  config.mixup_switch_prob = 0.5
  config.droppath = 0.0
  config.dtype = "float32"  # compute dtype; "bfloat16" on accelerators (parameters stay float32)
  config.remat = False
  # Attention implementation: "auto" (the hand-written core on CPU; on GPU cuDNN's fused kernel over tokens where it
  # runs, else XLA's; XLA's on TPU), "hand", "xla" or "cudnn" (xclip_jax.model.layers.dot_product_attention).
  config.attention = "auto"

  # data x fsdp x time devices; `time` > 1 splits each video's frames over devices (long clips, large models).
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "time": 1})

  # Evaluation: one view during training, the official 4 clips x 3 crops at the end.
  config.eval_batch_size = 64
  config.eval_every_epochs = 1
  config.final_eval_clips = 4
  config.final_eval_crops = 3

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3

  if small:
    config.arch = "ViT-B/32"
    config.epochs = 1
    config.warmup_epochs = 0
    config.steps_per_epoch = 4
    config.batch_size = 2
    config.eval_batch_size = 2
    config.final_eval_clips = 1
    config.final_eval_crops = 1
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
  # Locked, so that a config file setting a field no part of the run reads (a misspelt `config.learning_rate`) fails
  # there, naming it, rather than train with the default; a config that adds a field (configs/demo.py's `model`) does
  # so in `with config.unlocked():`.
  return config.lock()


def set_arch(config: ml_collections.ConfigDict, arch: str, frames: int):
  """The backbone and frame count, and the settings that go with them: the backbone's input size (336 for
  L/14-336), and remat for the ViT-L backbones (memory; the numbers do not change)."""
  if frames < 1:
    raise ValueError(f"config argument frames={frames} must be at least 1")
  model_config.preset(arch, num_frames=frames)  # refuses an unknown name, listing the known ones
  config.arch = arch
  config.num_frames = frames
  config.input_size = model_config.PRESETS[arch]["image_resolution"]
  config.remat = arch.startswith("ViT-L")


def few_shot_config(options: dict) -> ml_collections.ConfigDict:
  """The official few-shot recipe: 50 epochs, lr 2e-6, global batch 64 (4 per GPU x 8 GPUs x accumulation 2)."""
  if options["shots"] < 1:  # 0 would train on every video, with the few-shot recipe
    raise ValueError(f"config argument shots={options['shots']} must be at least 1")
  if options["split"] not in (1, 2, 3):
    raise ValueError(f"config argument split={options['split']} must be 1, 2 or 3 (the official splits)")
  config = experiment_config(small=options["small"])
  set_arch(config, options["arch"], options["frames"])
  config.data.shots = options["shots"]
  config.lr = 2e-6
  if not options["small"]:
    config.epochs = 50
    config.batch_size = 64
    config.eval_batch_size = 32
  # A single view, as the official few-shot runs end (their configs keep TEST's 1 clip x 1 crop, and their logs, unlike
  # the fully supervised ones, have no multi-view part): the paper's few-shot numbers.
  config.final_eval_clips = 1
  config.final_eval_crops = 1
  return config
