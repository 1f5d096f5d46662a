"""Loading X-CLIP from any supported checkpoint, and the inference wrapper used by evaluation and the demo."""

import functools
import logging
import numbers
import os
import pathlib
import tempfile

from etils import epath
import flax
import jax
import jax.numpy as jnp
import numpy as np

from xclip_jax import paths
from xclip_jax.model import config as model_config
from xclip_jax.model import xclip
from xclip_jax.parallel import sharding
from xclip_jax.weights import hf_clip
from xclip_jax.weights import hf_xclip
from xclip_jax.weights import native
from xclip_jax.weights import official
from xclip_jax.weights import torch_checkpoint


class XCLIPModel:
  """An X-CLIP model with its parameters; jit-compiled inference methods.

  Video is (B, T, H, W, 3) float32, normalised as the evaluation pipeline does (`input_pipeline.normalization`);
  text is token ids from `tokenize`.
  With a `mesh` (`sharding.make_mesh`), the parameters are laid out by the sharding rules and the videos split as in
  training: batch over the batch axes (B must be divisible by them), frames over `time`.
  """

  def __init__(
    self,
    config: model_config.XCLIPConfig,
    params,
    mesh: jax.sharding.Mesh | None = None,
    *,
    xclip_modules_trained: bool = True,
  ):
    self.config = config
    # False for a model loaded from CLIP: its message tokens, MIT and prompt generator are freshly initialised.
    self.xclip_modules_trained = xclip_modules_trained
    self.module = xclip.XCLIP(config)
    self.mesh = mesh
    if mesh is not None:
      sharding.check_frames_divisible(config.num_frames, mesh)
      params = jax.device_put(params, sharding.tree_shardings(params, mesh))
    self.params = params

  def with_frames(self, num_frames: int) -> "XCLIPModel":
    """This model taking `num_frames` frames per video, as `load_pretrained(path, num_frames)` gives it: its MIT
    temporal position embedding interpolated (with a warning where that embedding is trained)."""
    config, params = _resize_frames(self.config, self.params, num_frames, trained=self.xclip_modules_trained)
    return XCLIPModel(config, params, self.mesh, xclip_modules_trained=self.xclip_modules_trained)

  @functools.cached_property
  def _apply(self):
    # One compiled function per method; shapes (batch, classes) recompile as usual. Shardings follow the arguments.
    def compiled(name):
      method = functools.partial(self.module.apply, method=getattr(xclip.XCLIP, name))
      if self.mesh is None:
        return jax.jit(method)

      def on_mesh(*args):
        with sharding.activation_mesh(self.mesh):
          return method(*args)

      return jax.jit(on_mesh)

    return {name: compiled(name) for name in ("encode_text", "encode_frames", "encode_video", "logits_from_features")}

  def _variables(self):
    return {"params": self.params}

  def _video(self, video) -> jax.Array:
    dtype = video.dtype if hasattr(video, "dtype") else np.asarray(video).dtype  # a list too
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
        f"video of dtype {dtype}: expected float frames normalised with "
        "input_pipeline.normalization's MEAN_RGB and STD_RGB ((frames - MEAN_RGB) / STD_RGB for 0-255 frames)"
      )
    video = jnp.asarray(video, jnp.float32)
    if video.ndim and not video.shape[0]:
      raise ValueError(f"video of shape {video.shape}: a batch of no videos")
    if self.mesh is None:
      return video
    shards = sharding.num_batch_shards(self.mesh)
    if video.ndim != 5 or video.shape[0] % shards:
      raise ValueError(
        f"video of shape {video.shape}: on this mesh the batch must be (B, T, H, W, 3) with B divisible by {shards}"
      )
    return jax.device_put(video, sharding.video_sharding(self.mesh))

  def _text_features(self, text_features) -> jax.Array:
    text_features = jnp.asarray(text_features, jnp.float32)
    if text_features.ndim != 2 or not text_features.shape[0] or text_features.shape[1] != self.config.embed_dim:
      raise ValueError(
        f"text_features of shape {text_features.shape}: expected (K, {self.config.embed_dim}) with K >= 1, "
        "the output of encode_text"
      )
    return self._replicated(text_features)

  def _replicated(self, x) -> jax.Array:
    x = jnp.asarray(x)
    return x if self.mesh is None else jax.device_put(x, sharding.replicated(self.mesh))

  def encode_text(self, text_ids) -> jax.Array:
    """(K, 77) token ids -> (K, D) text features, without video conditioning.

    Texts are encoded in groups of equal `model.text_lengths`, each on its ids up to that length: the same features
    without running the transformer over the padding (the 400 Kinetics names: 279 texts of 4 ids, 116 of 8, 5 of 12).
    """
    text_ids = np.asarray(text_ids)
    context, vocab = self.config.context_length, self.config.vocab_size
    if text_ids.ndim != 2 or not text_ids.shape[0] or text_ids.shape[1] > context:
      raise ValueError(f"text_ids of shape {text_ids.shape}: expected (K, {context}) with K >= 1, from tokenize")
    if not np.issubdtype(text_ids.dtype, np.integer) or not ((text_ids >= 0) & (text_ids < vocab)).all():
      raise ValueError(f"text_ids must be integer token ids in [0, {vocab}), from tokenize")
    # Each text is pooled at its largest id, the end-of-text token (the vocabulary's last id): without one (a row of
    # zeros, another tokenizer's ids) the features would silently be those of some other position.
    ended = (text_ids == vocab - 1).any(axis=1)
    if not ended.all():
      raise ValueError(
        f"text_ids row {np.argmin(ended)} has no end-of-text token ({vocab - 1}): pass token ids from tokenize"
      )
    text_ids = text_ids.astype(np.int32)
    lengths = xclip.text_lengths(text_ids)
    groups = [np.flatnonzero(lengths == length) for length in np.unique(lengths)]
    features = [
      self._apply["encode_text"](self._variables(), self._replicated(text_ids[rows, : lengths[rows[0]]]))
      for rows in groups
    ]
    return jnp.concatenate(features)[np.argsort(np.concatenate(groups))]

  def encode_frames(self, video) -> tuple[jax.Array, jax.Array]:
    """(B, T, D) per-frame class features and (B, T, N, D) prompt visual tokens."""
    return self._apply["encode_frames"](self._variables(), self._video(video))

  def encode_video(self, video) -> tuple[jax.Array, jax.Array]:
    """(B, D) video features (before normalisation) and (B, T, N, D) prompt visual tokens."""
    return self._apply["encode_video"](self._variables(), self._video(video))

  def logits(self, video, text_ids=None, *, text_features=None) -> jax.Array:
    """(B, K) logits of each video against K class texts, given as token ids or as `encode_text` features.

    Encode the class texts once with `encode_text` and pass `text_features=` to classify many videos.
    """
    if (text_ids is None) == (text_features is None):
      raise ValueError("pass exactly one of text_ids and text_features")
    if text_features is None:
      text_features = self.encode_text(text_ids)
    return self._apply["logits_from_features"](
      self._variables(), self._video(video), self._text_features(text_features)
    )

  def save(self, directory) -> epath.Path:
    """Writes the converted checkpoint (`native.write_checkpoint`): xclip_config.json, which records whether the
    X-CLIP modules are trained, and the params in orbax.

    `directory` may be on cloud storage (gs://...). With several processes, every process calls this (the params
    may be sharded over all of them); process 0 writes the config.
    """
    return native.write_checkpoint(
      directory, self.config, self.params, xclip_modules_trained=self.xclip_modules_trained
    )


def _resize_frames(config, params, num_frames, trained: bool):
  """The MIT temporal position embedding interpolated to `num_frames`; `trained`: whether the X-CLIP modules are."""
  if num_frames is None or num_frames == config.num_frames:
    return config, params
  embedding = np.asarray(params["mit"]["positional_embedding"])
  if trained:
    # A warning: evaluated or used to classify as it is, the model scores below its published accuracy.
    logging.warning(
      "The checkpoint's model takes %d frames; its MIT temporal position embedding is interpolated to %d, which it "
      "was not trained with (evaluate at %d frames for its published accuracy).",
      config.num_frames,
      num_frames,
      config.num_frames,
    )
  else:  # a start for training (from CLIP): the embedding is its initialisation, no accuracy is lost
    logging.info(
      "The MIT temporal position embedding, untrained (a model from CLIP), is interpolated from %d frames to %d.",
      config.num_frames,
      num_frames,
    )
  params = flax.traverse_util.unflatten_dict(
    {
      **flax.traverse_util.flatten_dict(params),
      ("mit", "positional_embedding"): jnp.asarray(official.interpolate_temporal_embedding(embedding, num_frames)),
    }
  )
  return config.replace(num_frames=num_frames), params


def load_pretrained(
  path,
  num_frames: int | None = None,
  *,
  dtype: str = "float32",
  droppath: float = 0.0,
  remat: bool = False,
  attention: str = "auto",
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
) -> XCLIPModel:
  """Loads X-CLIP from any supported checkpoint, reading the architecture from it.

  Supported: an official X-CLIP `.pth` (training layout or bare state dict, `module.` prefix or not); OpenAI CLIP
  (TorchScript archive or state dict), which initialises the X-CLIP modules as the official code does (with
  `seed`); a Hugging Face X-CLIP directory (`config.json` + `model.safetensors` or `pytorch_model.bin`); a directory
  written by `python -m xclip_jax.convert` (as a workdir's `best/`); the workdir of `python -m xclip_jax.main`, whose
  newest checkpoint (the final model) it reads; a Hugging Face CLIP model directory (`CLIPModel`, model_type "clip"),
  which initialises the X-CLIP modules as for OpenAI CLIP. Nothing in the file is executed. A model loaded from CLIP
  (or from an xclip-jax checkpoint converted from one, which records it) has `xclip_modules_trained` False: it is a
  start for training, not a classifier.

  Args:
    path: the checkpoint file or directory; on cloud storage (gs://...), it is first copied to a temporary local
      folder (the readers need random access) and deleted once read.
    num_frames: frames per video; if it differs from the checkpoint's, the MIT temporal position embedding is
      linearly interpolated (a 32-frame model can run at 8 frames). Default: the checkpoint's (8 for CLIP).
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    droppath: stochastic depth rate of the video encoder, for fine-tuning.
    remat: rematerialise the video encoder blocks in the backward pass (saves memory in training).
    attention: the attention implementation, `XCLIPConfig.attention`: 'auto', 'hand', 'xla' or 'cudnn'.
    seed: initialisation seed of the X-CLIP modules when loading a CLIP checkpoint.
    mesh: run on these devices (`sharding.make_mesh`), e.g. with frames split over `time` for long clips.
  """
  # Before reading the checkpoint: a CLIP checkpoint would take 0 for its default of 8 frames.
  if num_frames is not None and not (isinstance(num_frames, numbers.Integral) and num_frames >= 1):
    raise ValueError(f"num_frames must be an integer of at least 1, got {num_frames!r}")
  options = dict(dtype=dtype, droppath=droppath, remat=remat, attention=attention, seed=seed, mesh=mesh)
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"no checkpoint at {path}")
  if paths.is_remote(path):
    with tempfile.TemporaryDirectory() as local:
      logging.info("Copying %s to the local disk to read it.", path)
      return load_pretrained(
        paths.copy_to_local(path, pathlib.Path(local) / epath.Path(path).name), num_frames, **options
      )
  path = pathlib.Path(path)
  overrides = dict(dtype=dtype, droppath=droppath, remat=remat, attention=attention)
  from_clip = False
  if path.is_dir():
    if native.is_checkpoint(path):
      config, params = native.read_checkpoint(path, **overrides)
      from_clip = not native.modules_trained(path)
    elif native.is_workdir(path):
      config, params = native.read_workdir(path, **overrides)
    elif hf_xclip.is_hf_checkpoint(path):
      state_dict, arch = hf_xclip.read_hf_checkpoint(path)
      config = model_config.XCLIPConfig(**arch, **overrides)
      params = official.params_from_official(state_dict, config)
    elif hf_clip.is_hf_clip_checkpoint(path):
      state_dict = hf_clip.read_hf_clip(path)
      config = official.config_from_official(
        state_dict, num_frames=num_frames or 8, **hf_clip.config_overrides(path), **overrides
      )
      logging.info(
        "%s is a Hugging Face CLIP model: initialising the X-CLIP modules (MIT, prompts, message tokens).", path
      )
      from_clip = True
      params = official.params_from_official(state_dict, config, base_params=official.init_params(config, seed))
    else:
      raise ValueError(
        f"{path} is a directory but neither an xclip-jax checkpoint ({native.CONFIG_FILE}), a training workdir "
        f"({native.WORKDIR_CHECKPOINTS}/ and {native.WORKDIR_RECORD}), a Hugging Face X-CLIP model, nor a Hugging "
        "Face CLIP model (config.json with model.safetensors or pytorch_model.bin)"
      )
  else:
    state_dict, _ = torch_checkpoint.read_state_dict(path)
    if "mit.positional_embedding" in state_dict:
      config = official.config_from_official(state_dict, **overrides)
      params = official.params_from_official(state_dict, config)
    else:
      # A CLIP checkpoint: X-CLIP's own modules start from their official initialisation.
      config = official.config_from_official(state_dict, num_frames=num_frames or 8, **overrides)
      logging.info("%s is a CLIP checkpoint: initialising the X-CLIP modules (MIT, prompts, message tokens).", path)
      from_clip = True
      params = official.params_from_official(state_dict, config, base_params=official.init_params(config, seed))
  config, params = _resize_frames(config, params, num_frames, trained=not from_clip)
  return XCLIPModel(config, jax.tree.map(jnp.asarray, params), mesh, xclip_modules_trained=not from_clip)


def load_error(path, error: BaseException) -> str:
  """What `load_pretrained(path)`'s `error` says, naming the checkpoint once: as it is where it begins or ends with
  the path, as most do ("PATH: neither a torch zip archive ...", "PATH/config.json: invalid JSON ...", "no checkpoint
  at PATH"), else after "checkpoint PATH: " ("checkpoint PATH: not a ViT X-CLIP/CLIP state dict ...")."""
  message = str(error)
  for name in {os.fspath(path), str(pathlib.Path(path)), os.path.abspath(path)}:
    begins = message.startswith(name) and message[len(name) : len(name) + 1] in (":", "/", " ")
    if begins or message.endswith(f" {name}"):
      return message
  return f"checkpoint {path}: {message}"


def from_config(config: model_config.XCLIPConfig, seed: int = 0) -> XCLIPModel:
  """A randomly initialised model (e.g. from `model.preset('ViT-B/32')`), without any file."""
  return XCLIPModel(config, official.init_params(config, seed))
