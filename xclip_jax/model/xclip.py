"""X-CLIP in Flax.

Module and parameter names follow the official PyTorch implementation (microsoft/VideoX, X-CLIP), and weights keep
PyTorch's layouts, so that weight conversion is a renaming (`visual.transformer.resblocks.0.message_fc.weight` is
`visual/transformer/resblocks_0/message_fc/weight` here, the same (out, in) array). Only LayerNorm weights are called
`scale` and the token embedding `embedding`, as in Flax. Video is channels-last: (B, T, H, W, 3).

Parameters are float32; `XCLIPConfig.dtype` sets the compute dtype, `XCLIPConfig.attention` the attention
implementation. LayerNorm statistics and softmax always run in float32.
"""

from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xclip_jax.model import layers
from xclip_jax.model.config import XCLIPConfig
from xclip_jax.parallel import sharding


class TextTransformer(nn.Module):
  """CLIP's causal text transformer (`transformer.resblocks_*`)."""

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x):
    # CLIP.initialize_parameters.
    proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
    inits = dict(
      in_proj=nn.initializers.normal(self.width**-0.5),
      out_proj=nn.initializers.normal(proj_std),
      c_fc=nn.initializers.normal((2 * self.width) ** -0.5),
      c_proj=nn.initializers.normal(proj_std),
    )
    for i in range(self.layers):
      block = layers.ResidualAttentionBlock(self.heads, self.dtype, inits, self.attention, name=f"resblocks_{i}")
      x = block(x, causal=True)
    return x


class CrossFrameAttentionBlock(nn.Module):
  """A CCT block: message tokens exchange information across frames, then each frame attends over its tokens.

  x: (B, T, L, D) tokens of every frame (class token first).
  """

  num_heads: int
  droppath: float = 0.0
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    length, width = x.shape[2:]
    # Official layouts are (L, B*T, D) for frame tokens and (T, B, D) for message tokens.
    token_drop = layers.DropPath(self.droppath, axis=2)
    message_drop = layers.DropPath(self.droppath, axis=1)

    message = layers.Linear(width, dtype=self.dtype, bias_init=layers.torch_linear_bias_init(width), name="message_fc")(
      x[:, :, 0]
    )
    message_attn = layers.MultiheadAttention(
      self.num_heads, self.dtype, attention=layers.attention_over_frames(self.attention), name="message_attn"
    )
    message = message + message_drop(
      message_attn(message, input_norm=layers.layer_norm("message_ln", self.dtype)), deterministic
    )
    # With frames split over devices, the attention above is the block's only exchange between them (of message
    # tokens); each device keeps its own frames' results.
    message = sharding.split_frames(message)

    # Each frame attends over [its tokens, its message token]; the message token's own output is dropped by the
    # official code, so it is not computed as a query here.
    tokens = jnp.concatenate([x, message[:, :, None]], axis=2)
    attn = layers.MultiheadAttention(self.num_heads, self.dtype, attention=self.attention, name="attn")
    ln_1 = layers.layer_norm("ln_1", self.dtype)
    x = x + token_drop(attn(tokens, num_queries=length, input_norm=ln_1), deterministic)
    mlp = layers.MLP(self.dtype, name="mlp")
    return sharding.split_frames(
      x + token_drop(mlp(x, input_norm=layers.layer_norm("ln_2", self.dtype)), deterministic)
    )


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
    weight = self.param("weight", layers.torch_linear_weight_init(), (self.width, 3, p, p))
    patches = einops.rearrange(images, "... (h p) (w q) c -> ... (h w) (c p q)", p=p, q=p)
    return layers.apply_weight(patches, weight.reshape(self.width, -1).astype(self.dtype))


class CrossFrameTransformer(nn.Module):
  """The stack of CCT blocks (`visual.transformer.resblocks.*`)."""

  layers: int
  heads: int
  droppath: float = 0.0
  remat: bool = False
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    # Stochastic depth rates grow linearly over depth, as torch.linspace(0, droppath, layers).
    rates = np.linspace(0.0, self.droppath, self.layers) if self.droppath > 0 else np.zeros(self.layers)
    # static_argnums counts the module itself as argument 0.
    block = nn.remat(CrossFrameAttentionBlock, static_argnums=(2,)) if self.remat else CrossFrameAttentionBlock
    for i in range(self.layers):
      x = block(self.heads, float(rates[i]), self.dtype, self.attention, name=f"resblocks_{i}")(x, deterministic)
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
  attention: str = "auto"

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
    x = sharding.split_frames(layers.layer_norm("ln_pre", self.dtype)(x))

    x = CrossFrameTransformer(
      self.layers, self.heads, self.droppath, self.remat, self.dtype, self.attention, name="transformer"
    )(x, deterministic)

    cls_features = layers.layer_norm("ln_post", self.dtype)(x[:, :, 0])
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))
    return cls_features @ proj.astype(self.dtype), x[:, :, 1:]


class MultiframeIntegrationTransformer(nn.Module):
  """MIT (`mit`): temporal transformer over the per-frame features, residual, then the mean over frames."""

  num_frames: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, frame_features):
    batch, frames, width = frame_features.shape
    positional_embedding = self.param("positional_embedding", layers.TRUNC_NORMAL_02, (1, self.num_frames, width))
    if frames != self.num_frames:
      raise ValueError(
        f"the model was built for {self.num_frames} frames but the video has {frames}; load it with "
        f"num_frames={frames} to interpolate the temporal position embedding"
      )
    x = frame_features + positional_embedding.astype(frame_features.dtype)
    # The official MIT initialises every layers.Linear (out_proj included) with trunc_normal(0.02) and zero bias.
    inits = dict(out_proj=layers.TRUNC_NORMAL_02, c_fc=layers.TRUNC_NORMAL_02, c_proj=layers.TRUNC_NORMAL_02)
    attention = layers.attention_over_frames(self.attention)
    for i in range(self.layers):
      x = layers.ResidualAttentionBlock(self.heads, self.dtype, inits, attention, name=f"resblocks_{i}")(x)
    return (x + frame_features).mean(axis=1)


class CrossAttention(nn.Module):
  """The prompt generator's attention (`cross_attn`): separate q/k/v projections without bias, then `proj`."""

  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, queries, memory):
    width = queries.shape[-1]
    dense = lambda name, bias: layers.Linear(
      width, use_bias=bias, dtype=self.dtype, weight_init=layers.TRUNC_NORMAL_02, name=name
    )
    out = layers.dot_product_attention(
      dense("q_proj", False)(queries),
      dense("k_proj", False)(memory),
      dense("v_proj", False)(memory),
      self.num_heads,
      attention=self.attention,
    )
    return dense("proj", True)(out)


class PromptGeneratorLayer(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, text, visual):
    width = text.shape[-1]
    text = text + CrossAttention(self.num_heads, self.dtype, self.attention, name="cross_attn")(
      layers.layer_norm("norm1", self.dtype)(text), visual
    )
    # Official names: mlp.0 (layers.Linear), mlp.1 (layers.QuickGELU), mlp.2 (Dropout), mlp.3 (layers.Linear).
    hidden = layers.Linear(4 * width, dtype=self.dtype, weight_init=layers.TRUNC_NORMAL_02, name="mlp_0")(
      layers.layer_norm("norm3", self.dtype)(text)
    )
    return text + layers.Linear(width, dtype=self.dtype, weight_init=layers.TRUNC_NORMAL_02, name="mlp_3")(
      layers.QuickGELU()(hidden)
    )


class VideoSpecificPrompt(nn.Module):
  """The video-specific prompt generator (`prompts_generator`): class texts attend to the video's visual tokens.

  text: (B, K, D) text features; visual: (B, N, D) visual tokens. Returns the prompt offsets alpha * text', (B, K, D).
  """

  layers: int
  heads: int
  alpha: float
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, text, visual):
    visual = layers.layer_norm("norm", self.dtype)(visual)
    for i in range(self.layers):
      text = PromptGeneratorLayer(self.heads, self.dtype, self.attention, name=f"decoder_{i}")(text, visual)
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
      cfg.attention,
    )
    self.transformer = TextTransformer(
      cfg.transformer_width, cfg.transformer_layers, cfg.transformer_heads, dtype, cfg.attention
    )
    self.token_embedding = nn.Embed(cfg.vocab_size, cfg.transformer_width, embedding_init=nn.initializers.normal(0.02))
    self.positional_embedding = self.param(
      "positional_embedding", nn.initializers.normal(0.01), (cfg.context_length, cfg.transformer_width)
    )
    self.ln_final = layers.layer_norm("ln_final", dtype)
    self.text_projection = self.param(
      "text_projection", nn.initializers.normal(cfg.transformer_width**-0.5), (cfg.transformer_width, cfg.embed_dim)
    )
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    self.mit = MultiframeIntegrationTransformer(cfg.num_frames, cfg.mit_layers, cfg.mit_heads, dtype, cfg.attention)
    self.prompts_generator = VideoSpecificPrompt(
      cfg.prompts_layers, cfg.prompts_heads, cfg.prompts_alpha, dtype, cfg.attention
    )
    self.prompts_visual_ln = layers.layer_norm("prompts_visual_ln", dtype)
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
