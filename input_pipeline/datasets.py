"""An experiment's datasets, from its config: checked paths, class names, few-shot lists, and the tf.data streams.

Every path may be on cloud storage (gs://...). Batch sizes are global: each process reads its rows of every batch.
"""

import dataclasses
import logging
import os

from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections

from input_pipeline import annotations
from input_pipeline import subsets
from input_pipeline import tfds_dataset
from input_pipeline import video_dataset
from xclip_jax import console
from xclip_jax.model import tokenizer


def check_exists(path: str, field: str, kind: str = "file") -> str:
  """Returns `path`, or raises naming the config field to set."""
  if not path:
    raise ValueError(f"config.{field} is not set: give the {kind} with --config.{field}=PATH")
  exists = epath.Path(path).is_dir() if kind == "folder" else epath.Path(path).exists()
  if not exists:
    raise FileNotFoundError(f"config.{field}: {path} does not exist (set --config.{field}=PATH)")
  return path


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation list with its classes: videos labelled 0..len(class_names)-1."""

  name: str
  annotation_file: str
  root: str
  label_list: str
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Experiment:
  class_names: tuple[str, ...]
  num_train_videos: int
  train_file: str  # the list training reads (the few-shot subset when data.shots > 0)


def read_class_names(path: str, field: str) -> tuple[str, ...]:
  """The class names of the label list at `path` (config field `field`), each checked to fit the text encoder."""
  names = tuple(annotations.read_label_list(check_exists(path, field)))
  try:
    tokenizer.tokenize(names)
  except tokenizer.TextTooLongError as error:
    raise ValueError(error.naming(names[error.row], path)) from None
  return names


def _class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  names = read_class_names(config.data.label_list, "data.label_list")
  if len(names) != config.num_classes:
    raise ValueError(
      f"config.num_classes is {config.num_classes} but {config.data.label_list} lists {len(names)} classes"
    )
  return names


def _evaluation_lists(config: ml_collections.ConfigDict) -> list[str]:
  """The config.data fields of the annotation lists that evaluation will read (as trainer's evaluations choose: the
  validation list in training, the test list at the end if there is one, else the validation list)."""
  fields = []
  if not config.data.tfds_dir and (config.mode == "train" or (config.data.val_file and not config.data.test_file)):
    fields.append("val_file")
  fields += [field for field in ("test_file", "single_frame_file") if config.data.get(field)]
  return fields


def _missing_videos(records: list[annotations.VideoRecord], root: str) -> list[str]:
  """The listed videos that a local folder root lacks; none are looked for in a .tar or on cloud storage.

  One listing per folder of videos, not one look-up per video: cheap for Kinetics' 240,000.
  """
  if not os.path.isdir(root):
    return []
  listings = {}
  missing = []
  for record in records:
    folder, name = os.path.split(os.path.join(root, record.path))
    if folder not in listings:
      listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    if name not in listings[folder]:
      missing.append(record.path)
  return missing


def _read_list(config: ml_collections.ConfigDict, field: str) -> list[annotations.VideoRecord]:
  """The records of the annotation list config.data.<field>, its labels checked (a bad one names file and line)."""
  path = check_exists(config.data[field], f"data.{field}")
  check_exists(config.data.root, "data.root", "folder or .tar")
  return annotations.read_annotations(path, config.num_classes)


def check_videos_present(
  config: ml_collections.ConfigDict, records: list[annotations.VideoRecord], name: str, root: str | None = None
):
  """Refuses the list `name` of `records` (videos under `root`, by default data.root) before any training when more
  of its videos are missing than the pipeline would skip before stopping on them later."""
  root = root or config.data.root
  missing = _missing_videos(records, root)
  allowed = config.data.max_failure_fraction * len(records)
  if len(missing) > allowed:
    raise ValueError(
      f"{name}: {len(missing)} of its {len(records)} videos are missing from {root}, more than the "
      f"{allowed:g} that data.max_failure_fraction={config.data.max_failure_fraction:g} allows: "
      f"{', '.join(missing[:3])}" + (", ..." if len(missing) > 3 else "")
    )


def _check_same_classes(stored: tuple[str, ...], class_names: tuple[str, ...], config):
  """Records keep label ids: trained with another label list, the ids would name other classes, or none."""
  if stored == class_names:
    return
  where = f"data.tfds_dir {config.data.tfds_dir} was built with"
  if len(stored) != len(class_names):
    raise ValueError(f"{where} {len(stored)} classes, data.label_list {config.data.label_list} has {len(class_names)}")
  raise ValueError(
    f"{where} another label list than data.label_list {config.data.label_list}: "
    f"{annotations.first_difference(stored, class_names)}"
  )


def _record_index(config: ml_collections.ConfigDict, field: str, class_names) -> tfds_dataset.RecordIndex:
  """The index of data.tfds_dir's records of the split config.data.<field>, checked to be there and of
  data.label_list's classes; a warning where they hold fewer frames than a clip takes."""
  split = config.data[field]
  index = tfds_dataset.RecordIndex.load(
    check_exists(config.data.tfds_dir, "data.tfds_dir", "folder"), split, f"config.data.{field}"
  )
  _check_same_classes(tuple(index.features["label"].names), class_names, config)
  if index.max_frames is not None and index.max_frames < config.num_frames:
    logging.warning(
      "data.tfds_dir %s: split %r stores at most %s per video (build_tfds --max_frames=%d), fewer than the %d "
      "of config.num_frames: every clip repeats frames, and the cross-frame parts of the model see fewer distinct "
      "frames than they take; rebuild the split with --max_frames of at least %d",
      config.data.tfds_dir,
      split,
      console.count(index.max_frames, "frame"),
      index.max_frames,
      config.num_frames,
      config.num_frames,
    )
  return index


def _check_evaluation_left_out(config: ml_collections.ConfigDict, index: tfds_dataset.RecordIndex):
  """Refuses the validation split's records before training when their build left out more videos than an evaluation
  allows to fail: found at the first validation, the run would stop there, after its first epoch."""
  allowed = video_dataset.eval_failure_allowance(config.data.max_failure_fraction, index.num_videos)
  if len(index.skipped) > allowed:
    raise ValueError(
      f"data.tfds_dir {config.data.tfds_dir}: its build left out {len(index.skipped)} of the {index.num_videos} "
      f"videos of split {config.data.val_split!r} (config.data.val_split; metadata.json lists them), a share of "
      f"{len(index.skipped) / index.num_videos:.2g}, more than data.max_failure_fraction="
      f"{config.data.max_failure_fraction:g} allows (an evaluation stops past {allowed:g} of them): raise it, or "
      "rebuild the split with those videos repaired"
    )


def _check_fills_a_batch(config: ml_collections.ConfigDict, num_videos: int, what: str):
  """Refuses a training list of fewer videos than one global batch before anything runs (the training stream would
  refuse it once the run has started)."""
  if num_videos < config.batch_size:
    raise ValueError(
      f"config.batch_size={config.batch_size} is more than the {console.count(num_videos, 'video')} of {what}: every "
      f"training step takes a global batch of config.batch_size videos; set --config.batch_size to at most "
      f"{num_videos}"
    )


def resolve(config: ml_collections.ConfigDict, workdir: epath.Path, resuming: bool = False) -> Experiment:
  """Checks the data the config names and prepares the training list (writing the few-shot subset to workdir; when
  `resuming` the checkpoints there, refusing a subset other than the one they were trained on)."""
  class_names = _class_names(config)
  for field in _evaluation_lists(config):
    check_videos_present(config, _read_list(config, field), config.data[field])
  if config.data.tfds_dir and (config.mode == "train" or not config.data.test_file):  # validation_set's records
    _check_evaluation_left_out(config, _record_index(config, "val_split", class_names))
  if config.mode == "eval":
    if not (config.data.val_file or config.data.test_file or config.data.tfds_dir or "zero_shot" in config):
      raise ValueError("config.mode=eval has nothing to evaluate: set config.data.test_file or config.data.val_file")
    return Experiment(class_names, 0, "")
  if config.data.tfds_dir:
    if config.data.shots:
      raise ValueError("data.shots (few-shot lists) needs annotation files, not data.tfds_dir records")
    index = _record_index(config, "train_split", class_names)
    _check_fills_a_batch(
      config,
      index.num_videos,
      f"split {config.data.train_split!r} (config.data.train_split) of data.tfds_dir {config.data.tfds_dir}",
    )
    # Over its epochs, each process meets every video the build left out: all count against its allowance.
    order = video_dataset.TrainOrder(index.num_videos, config.seed, config.batch_size)
    allowed = order.failure_allowance(config.data.max_failure_fraction)
    if len(index.skipped) > allowed:
      raise ValueError(
        f"data.tfds_dir {config.data.tfds_dir}: its build left out {len(index.skipped)} of the {index.num_videos} "
        f"videos of split {config.data.train_split!r} (metadata.json lists them), more than the {allowed:g} that "
        f"data.max_failure_fraction={config.data.max_failure_fraction:g} allows over an epoch of "
        f"{order.slots_per_epoch}: raise it, or rebuild the split with those videos repaired"
      )
    return Experiment(class_names, index.num_videos, "")
  records = _read_list(config, "train_file")
  if not config.data.shots:
    _check_fills_a_batch(config, len(records), f"data.train_file {config.data.train_file}")
    check_videos_present(config, records, config.data.train_file)
    return Experiment(class_names, len(records), config.data.train_file)
  records = subsets.k_shot_subset(
    records,
    config.num_classes,
    config.data.shots,
    config.seed,
    list_path=config.data.train_file,
    class_names=class_names,
  )
  # The videos the run reads: the few-shot subset's, not the whole list's.
  subset = f"the {config.data.shots}-shot subset of {config.data.train_file}"
  _check_fills_a_batch(config, len(records), f"{subset} (config.data.shots)")
  check_videos_present(config, records, subset)
  train_file = workdir / f"train_{config.data.shots}shot.txt"
  listing = "".join(f"{r.path} {r.label}\n" for r in records)
  if resuming and train_file.exists() and train_file.read_text() != listing:
    raise ValueError(
      f"{train_file} holds the {config.data.shots}-shot subset that the checkpoints in {workdir} were trained on, "
      "and this run draws another (config.seed or data.train_file changed): resume with the config that wrote them, "
      "or use another workdir"
    )
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    train_file.write_text(listing)
  multihost_utils.sync_global_devices("few-shot list written")
  return Experiment(class_names, len(records), str(train_file))


def train_stream(
  config, experiment: Experiment, start_position: int, failures: video_dataset.FailureLog
) -> video_dataset.Batches:
  """This process's endless stream of training batches (its rows of each global batch); its iterator raises
  TooManyFailuresError once too many videos failed."""
  options = dict(
    num_frames=config.num_frames,
    input_size=config.input_size,
    batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    max_failure_fraction=config.data.max_failure_fraction,
    start_position=start_position,
    failures=failures,
  )
  if config.data.tfds_dir:
    return tfds_dataset.make_train_dataset(config.data.tfds_dir, config.data.train_split, **options)
  return video_dataset.make_train_dataset(experiment.train_file, config.data.root, config.data.label_list, **options)


def validation_set(config, experiment: Experiment) -> EvalSet:
  if config.data.tfds_dir:
    return EvalSet("val", "", config.data.tfds_dir, config.data.label_list, experiment.class_names)
  return list_set(config, experiment, "val_file", "val")


def list_set(config, experiment: Experiment, field: str, name: str) -> EvalSet:
  """The evaluation set `name` of the annotation list `config.data.<field>`, its videos under `data.root`."""
  path = check_exists(config.data[field], f"data.{field}")
  check_exists(config.data.root, "data.root", "folder or .tar")
  return EvalSet(name, path, config.data.root, config.data.label_list, experiment.class_names)


def eval_stream(
  config, eval_set: EvalSet, num_clips: int, num_crops: int, failures: video_dataset.FailureLog
) -> video_dataset.Batches:
  """This process's evaluation batches of `eval_set`: every video once over all processes, padding masked; its
  iterator raises TooManyFailuresError once too many videos failed."""
  options = dict(
    num_frames=config.num_frames,
    input_size=config.input_size,
    batch_size=config.eval_batch_size,
    num_clips=num_clips,
    num_crops=num_crops,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    max_failure_fraction=config.data.max_failure_fraction,
    failures=failures,
  )
  if not eval_set.annotation_file:
    return tfds_dataset.make_eval_dataset(eval_set.root, config.data.val_split, **options)
  return video_dataset.make_eval_dataset(eval_set.annotation_file, eval_set.root, eval_set.label_list, **options)
