r"""Zero-shot (the paper's Table 5): train on Kinetics-400 at 32 frames, then evaluate on classes never trained on.

  python -m xclip_jax.main --config=configs/zero_shot.py --workdir=DIR --config.init.clip=ViT-B-16.pt
  python -m xclip_jax.main --config=configs/zero_shot.py --workdir=DIR --config.mode=eval \
      --config.init.checkpoint=k400_32_32_zero_shot.pth --config.data.val_file=

(`--config.data.val_file=` evaluates the zero-shot sets alone; left out, Kinetics-400's validation videos are
evaluated first, with 4 clips x 3 crops. The Kinetics-400 label list is read either way.)

Evaluations, each reported per split and as mean +- std over the splits, as the paper does:
  hmdb51, ucf101: the three official test splits (annotation files of the full 51 / 101 classes);
  k600_novel: the Kinetics-600 validation videos of the paper's three splits of 160 classes among the 220 that
    Kinetics-400 lacks (Chen and Huang, ICCV 2021, as X-CLIP evaluates; input_pipeline/kinetics600_zero_shot.json
    says where they come from), labels renumbered per split. With --config.zero_shot.k600_novel.class_splits=""
    it draws random subsets of the classes not in known_label_list instead.
Arguments: arch (default ViT-B/16), frames (default 32), small, sets (the evaluations, joined by '+'; default
hmdb51+ucf101+k600_novel: configs/zero_shot.py:sets=ucf101 where only UCF-101 is at hand). Data paths default to
/data/...
"""

import ml_collections

from configs import common
from input_pipeline import subsets

SETS = ("hmdb51", "ucf101", "k600_novel")


def get_config(arg: str | None = None):
  options = common.parse_arg(arg, arch="ViT-B/16", frames=32, small=False, sets="+".join(SETS))
  sets = options["sets"].split("+")
  if unknown := [name for name in sets if name not in SETS]:
    raise ValueError(f"config argument sets={options['sets']!r}: unknown {unknown[0]!r}; known: {'+'.join(SETS)}")
  config = common.experiment_config(small=options["small"])
  common.set_arch(config, options["arch"], options["frames"])
  config.num_classes = 400
  config.data.root = "/data/kinetics400/videos"
  config.data.train_file = "/data/kinetics400/train.txt"
  config.data.val_file = "/data/kinetics400/val.txt"
  config.data.label_list = "/data/kinetics400/kinetics_400_labels.csv"
  with config.unlocked():  # the fields only this config has
    # Views of the zero-shot evaluations (the paper evaluates them with a single view).
    config.zero_shot_clips = 1
    config.zero_shot_crops = 1
    config.zero_shot = ml_collections.ConfigDict()
    for name, num_files, labels in (("hmdb51", 3, "hmdb_51_labels.csv"), ("ucf101", 3, "ucf_101_labels.csv")):
      config.zero_shot[name] = ml_collections.ConfigDict(
        {
          "root": f"/data/{name}/videos",
          "val_files": tuple(f"/data/{name}/test_split{i}.txt" for i in range(1, num_files + 1)),
          "label_list": f"/data/{name}/{labels}",
          "known_label_list": "",
        }
      )
    config.zero_shot.k600_novel = ml_collections.ConfigDict(
      {
        "root": "/data/kinetics600/videos",
        "val_files": ("/data/kinetics600/val.txt",),
        "label_list": "/data/kinetics600/kinetics_600_labels.csv",
        # The published splits, as class names; they take precedence over the random subsets below.
        "class_splits": str(subsets.KINETICS600_ZERO_SHOT_SPLITS),
        # Without class_splits: classes of this list (or renamed in Kinetics-600) are known, the others novel, split
        # into random subsets.
        "known_label_list": "/data/kinetics400/kinetics_400_labels.csv",
        "num_subsets": 3,
        "subset_size": 160,
        "seed": 0,
      }
    )
    for name in SETS:  # every list is checked before training: a set not at hand is left out, not left empty
      if name not in sets:
        del config.zero_shot[name]
  return config.lock()
