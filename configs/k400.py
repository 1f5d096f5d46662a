r"""Kinetics-400, fully supervised (the paper's Table 1).

  python -m xclip_jax.main --config=configs/k400.py:arch=ViT-B/16,frames=8 --workdir=DIR \
      --config.init.clip=ViT-B-16.pt --config.data.root=/data/k400/videos

Arguments: arch (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336), frames (8, 16, 32), small (a few steps of tiny
batches on a CPU, to try a setup). The data paths default to /data/kinetics400/...; override them with
--config.data.*.
"""

from configs import common

DATA_DIR = "/data/kinetics400"


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, arch="ViT-B/32", frames=8, small=False)
  config = common.experiment_config(small=options["small"])
  common.set_arch(config, options["arch"], options["frames"])
  config.num_classes = 400
  config.data.root = f"{DATA_DIR}/videos"
  config.data.train_file = f"{DATA_DIR}/train.txt"
  config.data.val_file = f"{DATA_DIR}/val.txt"
  config.data.label_list = f"{DATA_DIR}/kinetics_400_labels.csv"
  return config.lock()
