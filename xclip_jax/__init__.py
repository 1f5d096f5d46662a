"""xclip-jax: X-CLIP (Ni et al., ECCV 2022) in JAX/Flax.

import xclip_jax
model = xclip_jax.load_pretrained("k400_32_8.pth")        # any supported checkpoint
ids = xclip_jax.tokenize(["abseiling", "air drumming"])    # (K, 77) int32
logits = model.logits(video, ids)                          # video: (B, T, H, W, 3) float32, normalised
"""

from xclip_jax.model.config import PRESETS
from xclip_jax.model.config import XCLIPConfig
from xclip_jax.model.config import preset
from xclip_jax.model.tokenizer import tokenize
from xclip_jax.pretrained import XCLIPModel
from xclip_jax.pretrained import from_config
from xclip_jax.pretrained import load_pretrained

__all__ = ["PRESETS", "XCLIPConfig", "XCLIPModel", "from_config", "load_pretrained", "preset", "tokenize"]
