"""Label lists and annotation files: read, and refused with file and line."""

import logging
import re

import pytest

from input_pipeline import annotations


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return path


def test_reads_the_official_label_lists(labels_dir):
  names = annotations.read_label_list(labels_dir / "kinetics_400_labels.csv")
  assert len(names) == 400
  assert names[0] == "abseiling"
  assert len(annotations.read_label_list(labels_dir / "hmdb_51_labels.csv")) == 51
  # None names two classes the model reads as one text.
  assert len(annotations.read_label_list(labels_dir / "kinetics_600_labels.csv")) == 600
  assert len(annotations.read_label_list(labels_dir / "ucf_101_labels.csv")) == 101


def test_label_list_ids_must_run_in_order(tmp_path):
  path = _write(tmp_path, "labels.csv", "id,name\n0,run\n2,jump\n")
  with pytest.raises(ValueError, match=r"labels\.csv:3: expected id 1"):
    annotations.read_label_list(path)


def test_label_list_needs_its_header_and_classes(tmp_path):
  with pytest.raises(ValueError, match=r"headless\.csv:1: .*id,name"):
    annotations.read_label_list(_write(tmp_path, "headless.csv", "0,run\n"))
  with pytest.raises(ValueError, match="no classes"):
    annotations.read_label_list(_write(tmp_path, "empty.csv", "id,name\n"))


def test_label_names_may_hold_quoted_commas(tmp_path):
  path = _write(tmp_path, "labels.csv", 'id,name\n0,"cooking, outdoors"\n')
  assert annotations.read_label_list(path) == ["cooking, outdoors"]


def test_a_quoted_name_after_a_space_is_read_without_its_quotes(tmp_path):
  path = _write(tmp_path, "labels.csv", 'id, name\n0, "air drumming"\n1,  "cooking, outdoors"\n2, "a ""b"""\n')
  assert annotations.read_label_list(path) == ["air drumming", "cooking, outdoors", 'a "b"']


def test_a_written_label_list_quotes_what_csv_needs_and_reads_back(tmp_path):
  names = ["archery", "cooking, outdoors", 'diving "high"', "skiéing"]
  annotations.write_label_list(tmp_path / "labels.csv", names)
  assert (tmp_path / "labels.csv").read_text() == (
    'id,name\n0,archery\n1,"cooking, outdoors"\n2,"diving ""high"""\n3,skiéing\n'
  )
  assert annotations.read_label_list(tmp_path / "labels.csv") == names


def test_blank_rows_of_a_label_list_are_skipped(tmp_path):
  path = _write(tmp_path, "labels.csv", "id,name\n0,a\n\n1,b\n\n")
  assert annotations.read_label_list(path) == ["a", "b"]
  path = _write(tmp_path, "spaces.csv", "id,name\n0,a\n   \n1,b\n\t\n  \n")  # lines of spaces only, too
  assert annotations.read_label_list(path) == ["a", "b"]


def test_lists_saved_by_a_spreadsheet_with_a_byte_order_mark_are_read(tmp_path):
  """... and Windows line ends."""
  (tmp_path / "labels.csv").write_bytes("\ufeffid,name\r\n0,run\r\n".encode())
  (tmp_path / "train.txt").write_bytes("\ufeffa/x.mp4 0\r\n".encode())
  assert annotations.read_label_list(tmp_path / "labels.csv") == ["run"]
  assert [r.path for r in annotations.read_annotations(tmp_path / "train.txt", 1)] == ["a/x.mp4"]


def test_lists_with_old_mac_line_ends_are_read_with_their_line_numbers(tmp_path):
  (tmp_path / "labels.csv").write_bytes(b"id,name\r0,run\r1,jump\r")
  (tmp_path / "train.txt").write_bytes(b"a.mp4 0\rb.mp4 1\r\rc.mp4 1\n\r\nd.mp4 0\r")
  assert annotations.read_label_list(tmp_path / "labels.csv") == ["run", "jump"]
  records = annotations.read_annotations(tmp_path / "train.txt", 2)
  assert [r.path for r in records] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
  (tmp_path / "bad.txt").write_bytes(b"a.mp4 0\rb.mp4 1\r\rc.mp4 7\r")
  with pytest.raises(ValueError, match=r"bad\.txt:4: label 7 is outside"):
    annotations.read_annotations(tmp_path / "bad.txt", 2)


def test_a_list_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
  (tmp_path / "labels.csv").write_bytes("id,name\n0,run\n".encode("utf-16"))
  with pytest.raises(ValueError, match=r"labels\.csv: not UTF-8 text \(invalid start byte at byte 0\)$"):
    annotations.read_label_list(tmp_path / "labels.csv")


def test_reads_annotation_lines(tmp_path):
  path = _write(tmp_path, "train.txt", "a/x.mp4 0\n\nb/y.mp4 2\n")
  assert annotations.read_annotations(path, num_classes=3) == [
    annotations.VideoRecord("a/x.mp4", 0),
    annotations.VideoRecord("b/y.mp4", 2),
  ]


def test_paths_with_spaces_are_read_the_label_being_the_last_field(tmp_path):
  # Kinetics' layout: a folder per class, named as the class.
  text = "air drumming/x1.mp4 1\n  air  drumming/x 2.mp4\t0  \nb.mp4 1\n"
  assert annotations.read_annotations(_write(tmp_path, "train.txt", text), num_classes=3) == [
    annotations.VideoRecord("air drumming/x1.mp4", 1),
    annotations.VideoRecord("air  drumming/x 2.mp4", 0),
    annotations.VideoRecord("b.mp4", 1),
  ]


@pytest.mark.parametrize(
  "bad_line,message",
  [
    ("c.mp4 3", r"train\.txt:3: label 3 is outside the label list of 3"),
    ("c.mp4 -1", r"train\.txt:3: label -1 is outside"),
    ("c.mp4", r'train\.txt:3: expected "relative/path label"'),
    ("c.mp4 1 2", r'train\.txt:3: expected "relative/path label"'),
    (
      "c.mp4 0\vd.mp4 1",
      r"train\.txt:3: expected \"relative/path label\", got 'c\.mp4 0\\x0bd\.mp4 1' \(the path holds '\\x0b'\)",
    ),
    ("c\td.mp4 1", r"train\.txt:3: expected \"relative/path label\", got 'c\\td\.mp4 1' \(the path holds '\\t'\)"),
    ("c d.mp4 300 1", r"train\.txt:3: expected \"relative/path label\", got 'c d\.mp4 300 1' \(two numbers after"),
    ("c.mp4 one", r"train\.txt:3: label 'one' is not an integer"),
    ("c.mp4 1_0", r"train\.txt:3: label '1_0' is not an integer"),
    ("c.mp4 +1", r"train\.txt:3: label '\+1' is not an integer"),
    ("c.mp4 \u0661", r"train\.txt:3: label '\u0661' is not an integer"),
  ],
)
def test_bad_annotation_line_is_refused_with_its_line_number(tmp_path, bad_line, message):
  path = _write(tmp_path, "train.txt", f"a.mp4 0\nb.mp4 1\n{bad_line}\n")
  with pytest.raises(ValueError, match=message):
    annotations.read_annotations(path, num_classes=3)


def test_a_video_listed_with_two_labels_is_refused_naming_both_lines(tmp_path):
  path = _write(tmp_path, "train.txt", "a.mp4 1\nb.mp4 0\na.mp4 2\n")
  with pytest.raises(ValueError, match=re.escape("train.txt:3: a.mp4 has label 2 here and label 1 on line 1")):
    annotations.read_annotations(path, num_classes=3)


@pytest.mark.parametrize("first, second", [("a.mp4", "./a.mp4"), ("c/a.mp4", "c//a.mp4"), ("c/a.mp4", "c/./a.mp4")])
def test_two_spellings_of_one_path_are_one_video(tmp_path, caplog, first, second):
  path = _write(tmp_path, "train.txt", f"{first} 1\nb.mp4 0\n{second} 2\n")
  expected = f"train.txt:3: {second} has label 2 here and label 1 on line 1 (as {first})"
  with pytest.raises(ValueError, match=re.escape(expected)):
    annotations.read_annotations(path, num_classes=3)
  # The same label: a repeat, warned of; each record keeps its line's spelling.
  path = _write(tmp_path, "val.txt", f"{first} 1\nb.mp4 0\n{second} 1\n")
  with caplog.at_level(logging.WARNING):
    records = annotations.read_annotations(path, num_classes=3)
  assert [r.path for r in records] == [first, "b.mp4", second]
  assert [r.getMessage() for r in caplog.records] == [
    f"{path}: 1 lines repeat an earlier line (the first, line 3, repeats line 1); read as listed, so their videos "
    "count more than once"
  ]


def test_repeated_lines_are_read_as_listed_with_one_warning(tmp_path, caplog):
  path = _write(tmp_path, "val.txt", "a.mp4 1\nb.mp4 0\nb.mp4 0\na.mp4  1\n")
  with caplog.at_level(logging.WARNING):
    records = annotations.read_annotations(path, num_classes=3)
  a, b = annotations.VideoRecord("a.mp4", 1), annotations.VideoRecord("b.mp4", 0)
  assert records == [a, b, b, a]
  assert [r.getMessage() for r in caplog.records] == [
    f"{path}: 2 lines repeat an earlier line (the first, line 3, repeats line 2); read as listed, so their videos "
    "count more than once"
  ]


def test_empty_annotation_file_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"val\.txt: the annotation file lists"):
    annotations.read_annotations(_write(tmp_path, "val.txt", "\n"), 3)


def test_a_class_named_twice_is_refused_naming_both_ids_and_lines(tmp_path):
  path = _write(tmp_path, "labels.csv", "id,name\n0,run\n1,jump\n2, run\n")
  with pytest.raises(ValueError, match=r"labels\.csv:4: class 'run' \(id 2\) reads as class 'run' \(id 0, line 2\)"):
    annotations.read_label_list(path)


@pytest.mark.parametrize(
  "first, second",
  [
    ("dancing", "Dancing"),
    ("dancing ballet", "dancing  ballet"),
    ("dancing ballet", "DANCING\tBALLET"),
    ("rock-climbing", "Rock - climbing"),
    ("tai chi" + " chi" * 80, "tai chi" + " chi" * 90),  # alike in the 77 tokens the text tower reads
  ],
)
def test_classes_the_model_reads_as_one_text_are_refused(tmp_path, first, second):
  # The tokenizer lower-cases, collapses whitespace and splits off punctuation: the model would read one prompt for
  # both classes.
  path = _write(tmp_path, "labels.csv", f"id,name\n0,{first}\n1,{second}\n")
  expected = f"labels.csv:3: class {second!r} (id 1) reads as class {first!r} (id 0, line 2)"
  with pytest.raises(ValueError, match=re.escape(expected)):
    annotations.read_label_list(path)
