"""The official code's tiny X-CLIP and its outputs, as much of them as a machine without ../shared needs for a parity
check of the video path: benchmarks/golden_tiny.npz, copied from ../shared/golden/xclip_tiny (its README says how
the official code made them).

The file holds, unchanged: the official weights of the video encoder, MIT and prompt modules and `logit_scale`
(`official/<name>`, 3.3 MB; the text tower's 30 MB, mostly the token embedding, are left out); the inputs `io/video`
and `io/text_features` (the official `encode_text` output, standing in for the text tower); the outputs
`io/logits`, `io/video_features`, `io/frame_cls_features`, `io/prompt_visual_tokens`; and `config`, the architecture
as `official.config_from_official` reads it from the full checkpoint. tests/benchmarks/test_device_check.py checks
it against ../shared where that exists. To write it again:

  python -m benchmarks.golden_tiny ../shared/golden/xclip_tiny
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from xclip_jax.model import config as model_config
from xclip_jax.model import xclip
from xclip_jax.weights import official
from xclip_jax.weights import torch_checkpoint

FILE = pathlib.Path(__file__).with_name("golden_tiny.npz")
VIDEO_PATH_PREFIXES = ("visual.", "mit.", "prompts_", "logit_scale")
INPUTS = ("video", "text_features")
OUTPUTS = ("logits", "video_features", "frame_cls_features", "prompt_visual_tokens")


def reference_arrays(golden_dir) -> dict[str, np.ndarray]:
  """What golden_tiny.npz holds, read from ../shared/golden/xclip_tiny (`golden_dir`)."""
  golden_dir = pathlib.Path(golden_dir)
  state_dict, _ = torch_checkpoint.read_state_dict(golden_dir / "xclip_official.pth")
  io = np.load(golden_dir / "io.npz")
  arrays = {f"io/{name}": io[name] for name in INPUTS + OUTPUTS}
  arrays.update({f"official/{k}": v for k, v in state_dict.items() if k.startswith(VIDEO_PATH_PREFIXES)})
  arrays["config"] = np.asarray(json.dumps(official.config_from_official(state_dict).to_dict(), sort_keys=True))
  return arrays


def load(path=FILE) -> tuple[model_config.XCLIPConfig, dict, dict[str, np.ndarray]]:
  """(config, parameters, io arrays) of the stored model; the text tower's parameters are zeros (never used)."""
  with np.load(path) as stored:
    arrays = dict(stored)
  config = model_config.XCLIPConfig.from_dict(json.loads(str(arrays.pop("config"))))
  state_dict = {k.removeprefix("official/"): v for k, v in arrays.items() if k.startswith("official/")}
  zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), official.abstract_params(config))
  params = official.params_from_official(state_dict, config, base_params=zeros)
  return config, params, {k.removeprefix("io/"): v for k, v in arrays.items() if k.startswith("io/")}


def forward(config: model_config.XCLIPConfig, params, video, text_features) -> dict[str, jax.Array]:
  """The stored outputs, computed: `video` (B, T, 3, H, W) as the official code takes it."""
  module = xclip.XCLIP(config)
  variables = {"params": params}
  video = jnp.transpose(video, (0, 1, 3, 4, 2))  # channels last
  frame_cls_features, prompt_visual_tokens = module.apply(variables, video, method=xclip.XCLIP.encode_frames)
  video_features, _ = module.apply(variables, video, method=xclip.XCLIP.encode_video)
  logits = module.apply(variables, video, text_features, method=xclip.XCLIP.logits_from_features)
  return dict(
    logits=logits,
    video_features=video_features,
    frame_cls_features=frame_cls_features,
    prompt_visual_tokens=prompt_visual_tokens,
  )


if __name__ == "__main__":
  np.savez_compressed(FILE, **reference_arrays(sys.argv[1]))
