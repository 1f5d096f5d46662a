"""X-CLIP in Flax.

Module and parameter names follow the official PyTorch implementation (microsoft/VideoX, X-CLIP), and weights keep
PyTorch's layouts, so that weight conversion is a renaming (`visual.transformer.resblocks.0.message_fc.weight` is
`visual/transformer/resblocks_0/message_fc/weight` here, the same (out, in) array). Only LayerNorm weights are called
`scale` and the token embedding `embedding`, as in Flax. Video is channels-last: (B, T, H, W, 3).

Parameters are float32; `XCLIPConfig.dtype` sets the compute dtype. LayerNorm statistics and softmax always run in
float32.
"""

import dataclasses
import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xclip_jax import sharding

# PyTorch's LayerNorm default; Flax's default (1e-6) would break parity.
LAYER_NORM_EPS = 1e-5


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

  def __post_init__(self):
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
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

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

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "XCLIPConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown X-CLIP config fields: {unknown}; known fields: {sorted(known)}")
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


# Initialisers reproducing the distributions of the official code (PyTorch defaults where it sets none), for weights
# in PyTorch's (out, in, ...) layout.
def torch_linear_weight_init():
  """nn.Linear's and nn.Conv2d's default weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=1, out_axis=0)


def torch_linear_bias_init(fan_in: int):
  bound = 1 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


TRUNC_NORMAL_02 = nn.initializers.truncated_normal(stddev=0.02)
XAVIER_UNIFORM = nn.initializers.xavier_uniform(in_axis=1, out_axis=0)


def apply_weight(x, weight):
  """x @ weight.T for a weight in PyTorch's (out, in) layout.

  Contracting both operands on their last axis runs about 3% faster in XLA's CPU matmul than x @ kernel with Flax's
  (in, out) layout; keeping PyTorch's layout also makes conversion a renaming.
  """
  return jnp.einsum("...i,oi->...o", x, weight)


class Linear(nn.Module):
  """torch.nn.Linear: `weight` in PyTorch's (out, in) layout and `bias`."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  weight_init: Any = torch_linear_weight_init()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", self.weight_init, (self.features, x.shape[-1]))
    y = apply_weight(x.astype(self.dtype), weight.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
    return y


def layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class QuickGELU(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * jax.nn.sigmoid(1.702 * x)


def dot_product_attention(q, k, v, num_heads: int, mask=None):
  """Multi-head attention core on (..., L, D) projections, as PyTorch computes it (q scaled before q.k).

  Heads are moved before the sequence axis so that both products are plain batched matmuls, and the softmax is
  normalised after the product with v (one division of (L, head_dim) instead of (L, L)); both are faster on CPU.
  """
  *batch, q_len, width = q.shape
  head_dim = width // num_heads
  heads_first = lambda t: jnp.moveaxis(t.reshape(*t.shape[:-1], num_heads, head_dim), -2, -3)
  q, k, v = heads_first(q * (head_dim**-0.5)), heads_first(k), heads_first(v)
  logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
  out = jnp.matmul(weights.astype(v.dtype), v) / weights.sum(axis=-1, keepdims=True).astype(v.dtype)
  return jnp.moveaxis(out, -3, -2).reshape(*batch, q_len, width)


class MultiheadAttention(nn.Module):
  """Self-attention with the parameters of torch.nn.MultiheadAttention (fused `in_proj`, `out_proj`)."""

  num_heads: int
  dtype: Any = jnp.float32
  in_proj_init: Any = None  # None: torch's xavier_uniform
  out_proj_init: Any = None  # None: torch's nn.Linear default

  @nn.compact
  def __call__(self, x, mask=None, num_queries=None):
    """Self-attention over the L tokens of x; only the first `num_queries` tokens (default all) are queries."""
    width = x.shape[-1]
    qkv = Linear(3 * width, dtype=self.dtype, weight_init=self.in_proj_init or XAVIER_UNIFORM, name="in_proj")(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    out = dot_product_attention(q[..., :num_queries, :], k, v, self.num_heads, mask)
    return Linear(
      width, dtype=self.dtype, weight_init=self.out_proj_init or torch_linear_weight_init(), name="out_proj"
    )(out)


class MLP(nn.Module):
  """`c_fc` -> QuickGELU -> `c_proj`, as in CLIP's residual blocks."""

  dtype: Any = jnp.float32
  fc_init: Any = None
  proj_init: Any = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = Linear(
      4 * width,
      dtype=self.dtype,
      weight_init=self.fc_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(width),
      name="c_fc",
    )(x)
    x = QuickGELU()(x)
    return Linear(
      width,
      dtype=self.dtype,
      weight_init=self.proj_init or torch_linear_weight_init(),
      bias_init=torch_linear_bias_init(4 * width),
      name="c_proj",
    )(x)


class DropPath(nn.Module):
  """Stochastic depth with the official code's mask shape.

  The official DropPath draws one decision per entry of the first axis of a sequence-first (L, N, D) tensor, that is
  per token position (and, for message tokens, per frame), shared across the batch. `axis` names that axis here.
  """

  rate: float
  axis: int

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if self.rate == 0.0 or deterministic:
      return x
    keep = 1.0 - self.rate
    shape = [1] * x.ndim
    shape[self.axis] = x.shape[self.axis]
    mask = jax.random.bernoulli(self.make_rng("droppath"), keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class ResidualAttentionBlock(nn.Module):
  """CLIP's pre-LN transformer block (text encoder and MIT)."""

  num_heads: int
  dtype: Any = jnp.float32
  inits: dict | None = None  # optional {'in_proj', 'out_proj', 'c_fc', 'c_proj'} initialisers

  @nn.compact
  def __call__(self, x, mask=None):
    inits = self.inits or {}
    attn = MultiheadAttention(
      self.num_heads, self.dtype, in_proj_init=inits.get("in_proj"), out_proj_init=inits.get("out_proj"), name="attn"
    )
    x = x + attn(layer_norm("ln_1", self.dtype)(x), mask)
    mlp = MLP(self.dtype, fc_init=inits.get("c_fc"), proj_init=inits.get("c_proj"), name="mlp")
    return x + mlp(layer_norm("ln_2", self.dtype)(x))


class TextTransformer(nn.Module):
  """CLIP's causal text transformer (`transformer.resblocks_*`)."""

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    length = x.shape[-2]
    causal = jnp.tril(jnp.ones((length, length), bool))
    # CLIP.initialize_parameters.
    proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
    inits = dict(
      in_proj=nn.initializers.normal(self.width**-0.5),
      out_proj=nn.initializers.normal(proj_std),
      c_fc=nn.initializers.normal((2 * self.width) ** -0.5),
      c_proj=nn.initializers.normal(proj_std),
    )
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.heads, self.dtype, inits, name=f"resblocks_{i}")(x, causal)
    return x


class CrossFrameAttentionBlock(nn.Module):
  """A CCT block: message tokens exchange information across frames, then each frame attends over its tokens.

  x: (B, T, L, D) tokens of every frame (class token first).
  """

  num_heads: int
  droppath: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    length, width = x.shape[2:]
    # Official layouts are (L, B*T, D) for frame tokens and (T, B, D) for message tokens.
    token_drop = DropPath(self.droppath, axis=2)
    message_drop = DropPath(self.droppath, axis=1)

    message = Linear(width, dtype=self.dtype, bias_init=torch_linear_bias_init(width), name="message_fc")(x[:, :, 0])
    message_attn = MultiheadAttention(self.num_heads, self.dtype, name="message_attn")
    message = message + message_drop(message_attn(layer_norm("message_ln", self.dtype)(message)), deterministic)
    # With frames split over devices, the attention above is the block's only exchange between them (of message
    # tokens); each device keeps its own frames' results.
    message = sharding.split_frames(message)

    # Each frame attends over [its tokens, its message token]; the message token's own output is dropped by the
    # official code, so it is not computed as a query here.
    tokens = jnp.concatenate([x, message[:, :, None]], axis=2)
    attn = MultiheadAttention(self.num_heads, self.dtype, name="attn")
    x = x + token_drop(attn(layer_norm("ln_1", self.dtype)(tokens), num_queries=length), deterministic)
    mlp = MLP(self.dtype, name="mlp")
    return sharding.split_frames(x + token_drop(mlp(layer_norm("ln_2", self.dtype)(x)), deterministic))


class PatchEmbedding(nn.Module):
  """`conv1`: the p x p, stride p convolution without bias, as one matmul over flattened patches (faster on CPU).

  (..., H, W, 3) -> (..., H/p * W/p, width), patches in row-major order as the official flatten gives them. The
  weight has Conv2d's (out, 3, p, p) layout.
  """

  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    weight = self.param("weight", torch_linear_weight_init(), (self.width, 3, p, p))
    patches = einops.rearrange(images, "... (h p) (w q) c -> ... (h w) (c p q)", p=p, q=p)
    return apply_weight(patches, weight.reshape(self.width, -1).astype(self.dtype))


class CrossFrameTransformer(nn.Module):
  """The stack of CCT blocks (`visual.transformer.resblocks.*`)."""

  layers: int
  heads: int
  droppath: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    # Stochastic depth rates grow linearly over depth, as torch.linspace(0, droppath, layers).
    rates = np.linspace(0.0, self.droppath, self.layers) if self.droppath > 0 else np.zeros(self.layers)
    # static_argnums counts the module itself as argument 0.
    block = nn.remat(CrossFrameAttentionBlock, static_argnums=(2,)) if self.remat else CrossFrameAttentionBlock
    for i in range(self.layers):
      x = block(self.heads, float(rates[i]), self.dtype, name=f"resblocks_{i}")(x, deterministic)
    return x


class CrossFrameCommunicationTransformer(nn.Module):
  """The X-CLIP video encoder (`visual`): a CLIP ViT whose blocks carry one message token per frame.

  Returns the per-frame class features after `ln_post` and `proj`, (B, T, output_dim), and the patch tokens of the
  last block without `ln_post`, (B, T, N, width).
  """

  patch_size: int
  width: int
  layers: int
  heads: int
  output_dim: int
  droppath: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video, deterministic: bool = True):
    batch, frames = video.shape[:2]
    scale = self.width**-0.5
    patches = PatchEmbedding(self.width, self.patch_size, self.dtype, name="conv1")(video.astype(self.dtype))
    class_embedding = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    positional_embedding = self.param(
      "positional_embedding", nn.initializers.normal(scale), (patches.shape[2] + 1, self.width)
    )
    cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, frames, 1, self.width))
    x = jnp.concatenate([cls, patches], axis=2) + positional_embedding.astype(self.dtype)
    x = sharding.split_frames(layer_norm("ln_pre", self.dtype)(x))

    x = CrossFrameTransformer(self.layers, self.heads, self.droppath, self.remat, self.dtype, name="transformer")(
      x, deterministic
    )

    cls_features = layer_norm("ln_post", self.dtype)(x[:, :, 0])
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))
    return cls_features @ proj.astype(self.dtype), x[:, :, 1:]


class MultiframeIntegrationTransformer(nn.Module):
  """MIT (`mit`): temporal transformer over the per-frame features, residual, then the mean over frames."""

  num_frames: int
  layers: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frame_features):
    batch, frames, width = frame_features.shape
    positional_embedding = self.param("positional_embedding", TRUNC_NORMAL_02, (1, self.num_frames, width))
    if frames != self.num_frames:
      raise ValueError(
        f"the model was built for {self.num_frames} frames but the video has {frames}; load it with "
        f"num_frames={frames} to interpolate the temporal position embedding"
      )
    x = frame_features + positional_embedding.astype(frame_features.dtype)
    # The official MIT initialises every Linear (out_proj included) with trunc_normal(0.02) and zero bias.
    inits = dict(out_proj=TRUNC_NORMAL_02, c_fc=TRUNC_NORMAL_02, c_proj=TRUNC_NORMAL_02)
    for i in range(self.layers):
      x = ResidualAttentionBlock(self.heads, self.dtype, inits, name=f"resblocks_{i}")(x)
    return (x + frame_features).mean(axis=1)


class CrossAttention(nn.Module):
  """The prompt generator's attention (`cross_attn`): separate q/k/v projections without bias, then `proj`."""

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries, memory):
    width = queries.shape[-1]
    dense = lambda name, bias: Linear(width, use_bias=bias, dtype=self.dtype, weight_init=TRUNC_NORMAL_02, name=name)
    out = dot_product_attention(
      dense("q_proj", False)(queries), dense("k_proj", False)(memory), dense("v_proj", False)(memory), self.num_heads
    )
    return dense("proj", True)(out)


class PromptGeneratorLayer(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text, visual):
    width = text.shape[-1]
    text = text + CrossAttention(self.num_heads, self.dtype, name="cross_attn")(
      layer_norm("norm1", self.dtype)(text), visual
    )
    # Official names: mlp.0 (Linear), mlp.1 (QuickGELU), mlp.2 (Dropout), mlp.3 (Linear).
    hidden = Linear(4 * width, dtype=self.dtype, weight_init=TRUNC_NORMAL_02, name="mlp_0")(
      layer_norm("norm3", self.dtype)(text)
    )
    return text + Linear(width, dtype=self.dtype, weight_init=TRUNC_NORMAL_02, name="mlp_3")(QuickGELU()(hidden))


class VideoSpecificPrompt(nn.Module):
  """The video-specific prompt generator (`prompts_generator`): class texts attend to the video's visual tokens.

  text: (B, K, D) text features; visual: (B, N, D) visual tokens. Returns the prompt offsets alpha * text', (B, K, D).
  """

  layers: int
  heads: int
  alpha: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text, visual):
    visual = layer_norm("norm", self.dtype)(visual)
    for i in range(self.layers):
      text = PromptGeneratorLayer(self.heads, self.dtype, name=f"decoder_{i}")(text, visual)
    alpha = self.param("alpha", nn.initializers.constant(self.alpha), (text.shape[-1],))
    return alpha.astype(text.dtype) * text


def normalize(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def text_lengths(text_ids, multiple: int = 4) -> np.ndarray:
  """Per text of (K, C) token ids: the position after its end token, rounded up to a multiple of `multiple`, at most C.

  `XCLIP.encode_text` gives a text the same features on its first `text_lengths` ids as on all C: the text
  transformer is causal and its output is pooled at the end token (the largest id, found by argmax). Rounding up
  keeps the number of distinct shapes, and so of compiled programs, small.
  """
  text_ids = np.asarray(text_ids)
  return np.minimum(-(-(text_ids.argmax(axis=-1) + 1) // multiple) * multiple, text_ids.shape[-1])


def truncate_text_ids(text_ids, multiple: int = 4) -> np.ndarray:
  """(K, C) token ids cut to (K, L), L the largest of their `text_lengths`: `XCLIP.encode_text` gives the same features.

  Works on concrete (host) ids: call it before `jax.jit`, e.g. once on a training run's class texts.
  """
  text_ids = np.asarray(text_ids)
  return text_ids[..., : text_lengths(text_ids, multiple).max(initial=1)]


class XCLIP(nn.Module):
  """X-CLIP: video encoder (CCT + MIT), CLIP text encoder, video-specific prompts.

  Methods (use with `model.apply(variables, ..., method=XCLIP.<name>)`):
    __call__(video, text_ids)               -> logits (B, K)
    encode_text(text_ids)                   -> (K, D) text features, no video conditioning
    encode_frames(video)                    -> (B, T, D) per-frame class features, (B, T, N, D) prompt visual tokens
    encode_video(video)                     -> (B, D) video features (MIT output), (B, T, N, D) prompt visual tokens
    logits_from_features(video, text_features) -> logits (B, K) against precomputed `encode_text` features
  """

  config: XCLIPConfig

  def setup(self):
    cfg = self.config
    dtype = cfg.compute_dtype
    self.visual = CrossFrameCommunicationTransformer(
      cfg.vision_patch_size,
      cfg.vision_width,
      cfg.vision_layers,
      cfg.vision_heads,
      cfg.embed_dim,
      cfg.droppath,
      cfg.remat,
      dtype,
    )
    self.transformer = TextTransformer(cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads, dtype)
    self.token_embedding = nn.Embed(cfg.vocab_size, cfg.transformer_width, embedding_init=nn.initializers.normal(0.02))
    self.positional_embedding = self.param(
      "positional_embedding", nn.initializers.normal(0.01), (cfg.context_length, cfg.transformer_width)
    )
    self.ln_final = layer_norm("ln_final", dtype)
    self.text_projection = self.param(
      "text_projection", nn.initializers.normal(cfg.transformer_width**-0.5), (cfg.transformer_width, cfg.embed_dim)
    )
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    self.mit = MultiframeIntegrationTransformer(cfg.num_frames, cfg.mit_layers, cfg.mit_heads, dtype)
    self.prompts_generator = VideoSpecificPrompt(cfg.prompts_layers, cfg.prompts_heads, cfg.prompts_alpha, dtype)
    self.prompts_visual_ln = layer_norm("prompts_visual_ln", dtype)
    self.prompts_visual_proj = self.param(
      "prompts_visual_proj", nn.initializers.normal(1.0), (cfg.vision_width, cfg.embed_dim)
    )

  def encode_text(self, text_ids):
    """(K, L) token ids, L at most the context length (see `text_lengths`) -> (K, D) text features."""
    cfg = self.config
    length = text_ids.shape[-1]
    if length > cfg.context_length:
      raise ValueError(f"text ids have length {length}, more than the model's context length {cfg.context_length}")
    positions = self.positional_embedding[:length].astype(cfg.compute_dtype)
    x = self.token_embedding(text_ids).astype(cfg.compute_dtype) + positions
    x = self.ln_final(self.transformer(x))
    # The end-of-text token has the largest id of the vocabulary, so argmax finds it.
    end = x[jnp.arange(x.shape[0]), jnp.argmax(text_ids, axis=-1)]
    return (end @ self.text_projection.astype(cfg.compute_dtype)).astype(jnp.float32)

  def encode_frames(self, video, deterministic: bool = True):
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be (B, T, H, W, 3), got shape {video.shape}")
    resolution = self.config.image_resolution
    if video.shape[2:4] != (resolution, resolution):
      raise ValueError(f"frames are {video.shape[2]}x{video.shape[3]}, the model expects {resolution}x{resolution}")
    cls_features, patch_tokens = self.visual(video, deterministic)
    prompt_tokens = self.prompts_visual_ln(patch_tokens) @ self.prompts_visual_proj.astype(patch_tokens.dtype)
    # Kept split over frames: the prompt generator needs only their mean (a reduction over devices), not the tokens.
    prompt_tokens = sharding.split_frames(prompt_tokens)
    return cls_features.astype(jnp.float32), prompt_tokens.astype(jnp.float32)

  def encode_video(self, video, deterministic: bool = True):
    cls_features, prompt_tokens = self.encode_frames(video, deterministic)
    video_features = self.mit(sharding.whole_video(cls_features).astype(self.config.compute_dtype))
    return video_features.astype(jnp.float32), prompt_tokens

  def logits_from_features(self, video, text_features, deterministic: bool = True):
    video_features, prompt_tokens = self.encode_video(video, deterministic)
    dtype = self.config.compute_dtype
    text = jnp.broadcast_to(text_features, (video.shape[0],) + text_features.shape).astype(dtype)
    visual = sharding.whole_video(prompt_tokens.mean(axis=1))
    text = text + self.prompts_generator(text, visual.astype(dtype))
    video_features = normalize(video_features)
    text = normalize(text.astype(jnp.float32))
    return jnp.exp(self.logit_scale) * jnp.einsum("bd,bkd->bk", video_features, text)

  def __call__(self, video, text_ids, deterministic: bool = True):
    return self.logits_from_features(video, self.encode_text(text_ids), deterministic)
