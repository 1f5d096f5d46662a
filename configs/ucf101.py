r"""UCF-101 few-shot (the paper's Table 4): K videos per class, 32 frames, 50 epochs at lr 2e-6, batch 64.

  python -m xclip_jax.main --config=configs/ucf101.py:shots=4 --workdir=DIR --config.init.clip=ViT-B-16.pt

Arguments: shots (2, 4, 8, 16), arch (default ViT-B/16), frames (default 32), split (1-3), small. Data paths default
to /data/ucf101/...
"""

from configs import common

DATA_DIR = "/data/ucf101"


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, shots=2, arch="ViT-B/16", frames=32, split=1, small=False)
  config = common.few_shot_config(options)
  config.num_classes = 101
  config.data.root = f"{DATA_DIR}/videos"
  config.data.train_file = f"{DATA_DIR}/train_split{options['split']}.txt"
  config.data.val_file = f"{DATA_DIR}/test_split{options['split']}.txt"
  config.data.label_list = f"{DATA_DIR}/ucf_101_labels.csv"
  return config.lock()
