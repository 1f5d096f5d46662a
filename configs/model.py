r"""X-CLIP architectures as configs, to build a model without a checkpoint file.

configs/model.py:arch=ViT-B/16,frames=16     (arch: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336)

config = get_config("arch=ViT-B/16,frames=16")
model = xclip_jax.from_config(xclip_jax.XCLIPConfig.from_dict(config.to_dict()))
"""

import ml_collections

from configs import common
from xclip_jax.model import config as model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = common.parse_arg(arg, arch="ViT-B/32", frames=8)
  preset = model_config.preset(options["arch"], num_frames=options["frames"])
  return ml_collections.ConfigDict(preset.to_dict(), type_safe=True).lock()
