"""The shipped Kinetics-600 zero-shot splits are the paper's: 3 splits of 160 of the 220 classes new to Kinetics-400."""

import json
import re

import pytest

from input_pipeline import annotations
from input_pipeline import subsets

# A few of the published classes, read off the source files by hand: classes620_label_defn.json indices 400, 401 and
# 619; in tst_class_idxs.json, index 400 is left out of split 3 and index 401 of split 2.
FIRST_NOVEL, SECOND_NOVEL, LAST_NOVEL = "acting in play", "adjusting glasses", "yarn spinning"


@pytest.fixture(scope="module")
def kinetics(labels_dir):
  k400 = annotations.read_label_list(labels_dir / "kinetics_400_labels.csv")
  k600 = annotations.read_label_list(labels_dir / "kinetics_600_labels.csv")
  return k400, k600


@pytest.fixture(scope="module")
def shipped():
  return json.loads(subsets.KINETICS600_ZERO_SHOT_SPLITS.read_text())


def test_there_are_220_novel_classes_all_kinetics_600_and_none_kinetics_400_under_either_name(kinetics, shipped):
  k400, k600 = kinetics
  novel = shipped["novel_classes"]
  assert len(novel) == len(set(novel)) == 220
  assert (novel[0], novel[1], novel[-1]) == (FIRST_NOVEL, SECOND_NOVEL, LAST_NOVEL)
  assert set(novel) <= set(k600)
  assert not set(novel) & (set(k400) | set(subsets.KINETICS_400_TO_600_RENAMES.values()))


def test_each_split_has_160_distinct_novel_classes(shipped):
  novel = set(shipped["novel_classes"])
  assert [len(set(split)) for split in shipped["splits"]] == [160, 160, 160]
  assert [len(split) for split in shipped["splits"]] == [160, 160, 160]
  assert all(set(split) <= novel for split in shipped["splits"])
  assert [FIRST_NOVEL in split for split in shipped["splits"]] == [True, True, False]
  assert [SECOND_NOVEL in split for split in shipped["splits"]] == [True, False, True]


def test_the_220_are_kinetics_600_less_kinetics_400_less_the_renamed_classes(kinetics, shipped):
  k400, k600 = kinetics
  novel = [k600[i] for i in subsets.novel_classes(k400, k600)]
  assert sorted(novel) == sorted(shipped["novel_classes"])
  # A plain name match counts the 12 renamed Kinetics-400 classes as novel: 232.
  assert len(subsets.novel_classes(k400, k600, renames={})) == 232


def test_renames_map_kinetics_400_names_to_kinetics_600_names(kinetics):
  k400, k600 = kinetics
  assert len(subsets.KINETICS_400_TO_600_RENAMES) == 12
  for old, new in subsets.KINETICS_400_TO_600_RENAMES.items():
    assert old in k400 and old not in k600 and new in k600 and new not in k400, (old, new)


def test_splits_resolve_to_ids_of_the_label_list(kinetics, shipped):
  _, k600 = kinetics
  splits = subsets.read_class_splits(subsets.KINETICS600_ZERO_SHOT_SPLITS, k600)
  assert [[k600[i] for i in ids] for ids in splits] == shipped["splits"]


def test_a_split_naming_a_class_the_label_list_lacks_is_refused(tmp_path):
  path = tmp_path / "splits.json"
  path.write_text(json.dumps({"splits": [["abseiling", "dancing on the moon"]]}))
  with pytest.raises(ValueError, match=r"split 1 names 1 classes not in the label list.*dancing on the moon"):
    subsets.read_class_splits(path, ["abseiling", "air drumming"])
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match="not a class-splits file"):
    subsets.read_class_splits(path, ["abseiling"])


@pytest.mark.parametrize(
  "splits, message",
  [
    ([], "lists no class split"),  # the evaluation's mean and std would be NaN
    ([[]], "split 1 is not a list of class names"),
    (["abseiling"], "split 1 is not a list of class names"),  # a name, not a list of them
    ([["abseiling", "air drumming", "abseiling"]], r"split 1 repeats classes: \['abseiling'\]"),
  ],
  ids=["no-split", "empty-split", "a-name", "repeat"],
)
def test_a_splits_file_without_splits_of_distinct_names_is_refused_naming_the_problem(tmp_path, splits, message):
  path = tmp_path / "splits.json"
  path.write_text(json.dumps({"splits": splits}))
  with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {message}"):
    subsets.read_class_splits(path, ["abseiling", "air drumming"])
