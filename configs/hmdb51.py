r"""HMDB-51 few-shot (the paper's Table 4): K videos per class, 32 frames, 50 epochs at lr 2e-6, batch 64.

  python -m xclip_jax.main --config=configs/hmdb51.py:shots=2 --workdir=DIR --config.init.clip=ViT-B-16.pt

Arguments: shots (2, 4, 8, 16), arch (default ViT-B/16), frames (default 32), split (1-3: which official
train/test split the files are), small. The K-shot list is drawn from the training list with `seed` and written to
the workdir. Data paths default to /data/hmdb51/...
"""

from configs import common

DATA_DIR = "/data/hmdb51"


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, shots=2, arch="ViT-B/16", frames=32, split=1, small=False)
  config = common.few_shot_config(options)
  config.num_classes = 51
  config.data.root = f"{DATA_DIR}/videos"
  config.data.train_file = f"{DATA_DIR}/train_split{options['split']}.txt"
  config.data.val_file = f"{DATA_DIR}/test_split{options['split']}.txt"
  config.data.label_list = f"{DATA_DIR}/hmdb_51_labels.csv"
  return config.lock()
