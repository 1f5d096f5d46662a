r"""Kinetics-600, fully supervised (the paper's Table 2).

  python -m xclip_jax.main --config=configs/k600.py:arch=ViT-B/16,frames=8 --workdir=DIR --config.init.clip=...

Arguments: arch (default ViT-B/16), frames (default 8), small, as configs/k400.py. Data paths default to
/data/kinetics600/...
"""

from configs import common

DATA_DIR = "/data/kinetics600"


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, arch="ViT-B/16", frames=8, small=False)
  config = common.experiment_config(small=options["small"])
  common.set_arch(config, options["arch"], options["frames"])
  config.num_classes = 600
  config.data.root = f"{DATA_DIR}/videos"
  config.data.train_file = f"{DATA_DIR}/train.txt"
  config.data.val_file = f"{DATA_DIR}/val.txt"
  config.data.label_list = f"{DATA_DIR}/kinetics_600_labels.csv"
  return config.lock()
