"""Imports from the X-CLIP folder of a microsoft/VideoX checkout (`--official_code`), importing only what the
benchmarks run: the model for `--mode=eval` and `--mode=train`, the optimiser and Mixup/CutMix for `--mode=train`.

Nothing of the official code is copied here; it needs PyTorch (`pip install torch==2.13.0`).
"""

import importlib.util
import pathlib
import sys
import types


def import_build_model(code_dir: pathlib.Path):
  """`models.xclip.build_model` of the checkout.

  `timm` (used there only for `trunc_normal_`) is replaced by PyTorch's own function when it is not installed, and the
  `clip` package is entered without running its `__init__`, which pulls in the tokenizer and torchvision.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit("--official_code needs PyTorch: pip install torch==2.13.0") from e
  if not (code_dir / "models" / "xclip.py").is_file() or not (code_dir / "clip" / "model.py").is_file():
    raise SystemExit(f"{code_dir} is not the X-CLIP folder of microsoft/VideoX (models/xclip.py, clip/model.py)")
  if importlib.util.find_spec("timm") is None:
    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    sys.modules.update(
      {"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"), "timm.models.layers": layers}
    )
  clip_package = types.ModuleType("clip")
  clip_package.__path__ = [str(code_dir / "clip")]
  sys.modules["clip"] = clip_package
  sys.path.insert(0, str(code_dir))
  from models import xclip  # pylint: disable=g-import-not-at-top

  return xclip.build_model


def _import_file(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def import_train_parts(code_dir: pathlib.Path) -> tuple[types.ModuleType, types.ModuleType]:
  """(`utils/optimizer.py`, `datasets/blending.py`) of the checkout, without the packages around them."""
  try:
    import timm.scheduler.cosine_lr  # noqa: F401 - optimizer.py imports it; the step never calls it
  except ImportError:
    cosine_lr = types.ModuleType("timm.scheduler.cosine_lr")
    cosine_lr.CosineLRScheduler = None
    sys.modules.update({"timm.scheduler": types.ModuleType("timm.scheduler"), "timm.scheduler.cosine_lr": cosine_lr})
  return (
    _import_file("official_optimizer", code_dir / "utils" / "optimizer.py"),
    _import_file("official_blending", code_dir / "datasets" / "blending.py"),
  )
