"""The architecture of an X-CLIP model (`XCLIPConfig`) and the CLIP backbones it starts from (`PRESETS`)."""

import dataclasses
import math
import numbers
from typing import Any

import jax.numpy as jnp

from xclip_jax.model import layers

# Fields that say how the model runs, not what it is (compute dtype, drop path, remat, attention implementation): the
# loader or the experiment config chooses them; a checkpoint keeps the others (`XCLIPConfig.architecture`).
RUN_OPTIONS = ("dtype", "droppath", "remat", "attention")
# Fields of at least 1: widths, the encoders' depths, the input's size and frames, token positions and ids.
SIZES = (
  "embed_dim",
  "image_resolution",
  "vision_layers",
  "vision_width",
  "vision_patch_size",
  "context_length",
  "vocab_size",
  "transformer_width",
  "transformer_layers",
  "num_frames",
)
# Fields of at least 0: no MIT or prompt-generator layer skips that block (the model still computes), 0 heads takes
# the official rule.
COUNTS = (
  "mit_layers",
  "prompts_layers",
  "vision_heads",
  "transformer_heads",
  "mit_heads",
  "prompts_heads",
)


@dataclasses.dataclass(frozen=True)
class XCLIPConfig:
  """Architecture of an X-CLIP model; the defaults are those of the official X-CLIP configs."""

  embed_dim: int
  image_resolution: int
  vision_layers: int
  vision_width: int
  vision_patch_size: int
  context_length: int = 77
  vocab_size: int = 49408
  transformer_width: int = 512
  transformer_heads: int = 8
  transformer_layers: int = 12
  num_frames: int = 8
  mit_layers: int = 1
  prompts_layers: int = 2
  prompts_alpha: float = 0.1
  # Head counts: the official code derives them as width // 64; Hugging Face configs may set other values.
  vision_heads: int = 0
  mit_heads: int = 0
  prompts_heads: int = 0
  droppath: float = 0.0
  remat: bool = False
  dtype: str = "float32"
  # The attention implementation (layers.ATTENTION_IMPLEMENTATIONS); "auto" picks one for the backend.
  attention: str = "auto"

  def __post_init__(self):
    # Before the checks below, which divide by some of them.
    for name, minimum in [*((name, 1) for name in SIZES), *((name, 0) for name in COUNTS)]:
      value = getattr(self, name)
      # JSON's true would pass for 1 (a bool is an Integral).
      if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    for name, width in (
      ("vision_heads", self.vision_width),
      ("mit_heads", self.embed_dim),
      ("prompts_heads", self.embed_dim),
      ("transformer_heads", self.transformer_width),
    ):
      if not getattr(self, name):  # 0: the official rule
        object.__setattr__(self, name, max(width // 64, 1))
      if width % getattr(self, name):
        raise ValueError(f"{name}={getattr(self, name)} does not divide the width {width}")
    if self.image_resolution % self.vision_patch_size:
      raise ValueError(
        f"image_resolution {self.image_resolution} is not a multiple of the patch size {self.vision_patch_size}"
      )
    if not (isinstance(self.droppath, numbers.Real) and 0 <= self.droppath < 1):  # NaN too
      raise ValueError(f"droppath must be a number in [0, 1), got {self.droppath!r}")
    # The prompt generator's initial scale (a parameter, any sign); JSON's true would pass for 1.
    alpha = self.prompts_alpha
    if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and math.isfinite(alpha)):
      raise ValueError(f"prompts_alpha must be a finite number, got {alpha!r}")
    if not isinstance(self.remat, bool):
      raise ValueError(f"remat must be True or False, got {self.remat!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.attention not in layers.ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def num_patches(self) -> int:
    return (self.image_resolution // self.vision_patch_size) ** 2

  def replace(self, **changes) -> "XCLIPConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def architecture(self) -> dict[str, Any]:
    """The fields that say what the model is: all but RUN_OPTIONS."""
    return {k: v for k, v in self.to_dict().items() if k not in RUN_OPTIONS}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "XCLIPConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown X-CLIP config fields: {unknown}; known fields: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
      raise ValueError(f"X-CLIP config lacks the fields {missing}")
    return cls(**values)


# The CLIP backbones X-CLIP starts from; X-CLIP parts use the official defaults (1 MIT layer, 2 prompt layers).
PRESETS = {
  "ViT-B/32": dict(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=32,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
  ),
  "ViT-B/16": dict(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=16,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
  ),
  "ViT-L/14": dict(
    embed_dim=768,
    image_resolution=224,
    vision_layers=24,
    vision_width=1024,
    vision_patch_size=14,
    transformer_width=768,
    transformer_heads=12,
    transformer_layers=12,
  ),
  "ViT-L/14-336": dict(
    embed_dim=768,
    image_resolution=336,
    vision_layers=24,
    vision_width=1024,
    vision_patch_size=14,
    transformer_width=768,
    transformer_heads=12,
    transformer_layers=12,
  ),
}


def preset(arch: str, **overrides) -> XCLIPConfig:
  """The config of a named backbone (`ViT-B/32`, `ViT-B/16`, `ViT-L/14`, `ViT-L/14-336`)."""
  if arch not in PRESETS:
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(PRESETS)}")
  return XCLIPConfig(**{**PRESETS[arch], **overrides})
