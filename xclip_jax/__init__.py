"""xclip-jax: X-CLIP (Ni et al., ECCV 2022) in JAX/Flax.

import xclip_jax
model = xclip_jax.load_pretrained("k400_32_8.pth")        # any supported checkpoint
ids = xclip_jax.tokenize(["abseiling", "air drumming"])    # (K, 77) int32
logits = model.logits(video, ids)                          # video: (B, T, H, W, 3) float32, normalised
"""

import importlib

# The public API, imported when first used: `python -m xclip_jax.main` imports this package before main restarts
# itself with the huge-page tunable (xclip_jax.host_memory), and JAX imported by then would be imported twice.
_API = {
  "PRESETS": "xclip_jax.model.config",
  "XCLIPConfig": "xclip_jax.model.config",
  "preset": "xclip_jax.model.config",
  "tokenize": "xclip_jax.model.tokenizer",
  "XCLIPModel": "xclip_jax.pretrained",
  "from_config": "xclip_jax.pretrained",
  "load_pretrained": "xclip_jax.pretrained",
}

__all__ = sorted(_API)


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f"module 'xclip_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_API[name]), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_API})
