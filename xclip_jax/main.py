r"""Fine-tunes and evaluates X-CLIP.

  python -m xclip_jax.main --config=configs/k400.py:arch=ViT-B/16,frames=8 --workdir=DIR \
      --config.init.clip=ViT-B-16.pt --config.data.root=/data/k400/videos
  python -m xclip_jax.main --config=configs/k400.py --workdir=DIR --config.mode=eval \
      --config.init.checkpoint=k400_32_8.pth

Rerunning a training command with the same workdir resumes it.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from xclip_jax import compilation_cache
from xclip_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/k400.py:arch=ViT-B/16.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and eval_results.json go.")
_CACHE_DIR = compilation_cache.define_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable(_CACHE_DIR.value)
  logging.info("JAX: %d processes, %d devices (%s)", jax.process_count(), jax.device_count(), jax.devices()[0].platform)
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
