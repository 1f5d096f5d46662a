"""Annotation files and label lists in the official X-CLIP layout.

Label list: a CSV with the header `id,name` and one `id,name` row per class,
ids 0..N-1 in order, each name once (names may contain commas when quoted; two names
the model reads as one text, as `Dancing` and `dancing`, count as one).
Annotation file: one `relative/path.mp4 label` line per video (the label is the
last field: the path may hold spaces, not end in ` <number>`); a video listed
with two labels is refused, a line repeated is read as it is, with a warning
(paths compare normalised: `./a.mp4` and `a.mp4` are one video).
Problems are refused when the files are read, naming file and line. Both may
be on cloud storage (gs://...): they are read through etils.epath.
"""

from collections.abc import Sequence
import csv
import dataclasses
import io
import logging
import os
import posixpath
import re

from etils import epath

from xclip_jax.model import tokenizer


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  path: str
  label: int


def same_video(path: str) -> str:
  """The key under which two spellings of one listed path (`a.mp4`, `./a.mp4`, `c//a.mp4`) compare equal."""
  return posixpath.normpath(path)


def _read_text(path: str | os.PathLike[str]) -> str:
  """A list's text: UTF-8, with or without the byte-order mark that spreadsheet programs write first."""
  try:
    return epath.Path(path).read_bytes().decode("utf-8-sig")  # epath's read_text takes no encoding
  except UnicodeDecodeError as error:
    raise ValueError(f"{os.fspath(path)}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def write_label_list(csv_path, names: list[str]):
  """Writes `names` as the `id,name` CSV read_label_list reads (quoted where a name holds a comma or a quote)."""
  text = io.StringIO(newline="")
  csv.writer(text, lineterminator="\n").writerows([("id", "name"), *enumerate(names)])
  epath.Path(csv_path).write_text(text.getvalue())


def read_label_list(csv_path: str | os.PathLike[str]) -> list[str]:
  """Returns the class names of an `id,name` CSV, indexed by id."""
  text = _read_text(csv_path)
  csv_path = os.fspath(csv_path)
  # skipinitialspace: `0, "air drumming"` (a space after the comma) reads the name without its quote marks.
  rows = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True))
  if not rows or [cell.strip() for cell in rows[0]] != ["id", "name"]:
    raise ValueError(f'{csv_path}:1: expected the header "id,name"')
  names = []
  lines = []  # each name's line
  for line_number, row in enumerate(rows[1:], start=2):
    if not row or (len(row) == 1 and not row[0].strip()):  # a blank line, or one of spaces only
      continue
    if len(row) != 2:
      raise ValueError(f'{csv_path}:{line_number}: expected "id,name", got {row!r}')
    class_id, name = row[0].strip(), row[1].strip()
    if class_id != str(len(names)):
      raise ValueError(
        f"{csv_path}:{line_number}: expected id {len(names)} (ids must run 0..N-1 in order), got {class_id!r}"
      )
    if not name:
      raise ValueError(f"{csv_path}:{line_number}: empty class name")
    names.append(name)
    lines.append(line_number)
  if not names:
    raise ValueError(f"{csv_path}: the label list has no classes")
  same = first_same_reading(names)
  if same:
    first, second = same
    raise ValueError(
      f"{csv_path}:{lines[second]}: class {names[second]!r} (id {second}) reads as class {names[first]!r} (id "
      f"{first}, line {lines[first]}): the model sees the same text for both"
    )
  return names


def first_same_reading(names: Sequence[str]) -> tuple[int, int] | None:
  """The first pair of indices (i, j), i < j, of class names that the model reads as one text; None where there is
  none.

  Compared by their token ids as `tokenize` gives them, cut to the context length as the text tower reads them: the
  tokenizer lower-cases, collapses whitespace and splits off punctuation (`Rock-climbing` reads as `rock - climbing`).
  Two such classes get the same prompt, so the later one is never predicted, and results keyed by name merge them.
  """
  first_of_ids = {}
  for j, ids in enumerate(tokenizer.tokenize(names, truncate=True)):
    i = first_of_ids.setdefault(ids.tobytes(), j)
    if i != j:
      return i, j
  return None


def first_difference(there: Sequence[str], here: Sequence[str]) -> str:
  """The first class of two label lists that differs, e.g. `class 3 is 'run' there, 'jump' here`; a list shorter
  than the other lacks it."""
  i = next((i for i, (a, b) in enumerate(zip(there, here)) if a != b), min(len(there), len(here)))
  name_there = repr(there[i]) if i < len(there) else f"missing ({len(there)} classes)"
  name_here = repr(here[i]) if i < len(here) else f"missing ({len(here)} classes)"
  return f"class {i} is {name_there} there, {name_here} here"


def read_annotations(path: str | os.PathLike[str], num_classes: int) -> list[VideoRecord]:
  """Reads `relative/path label` lines; labels must be in [0, num_classes), one per video."""
  # Any line end, as the label list's CSV reader takes them: \n, \r\n, and \r alone (old Mac editors).
  lines = _read_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")
  path = os.fspath(path)
  records = []
  first_seen = {}  # same_video(path) -> (path as first listed, label, line)
  repeats = []  # (line, the line it repeats)
  for line_number, line in enumerate(lines, start=1):
    # The label is the last field, the path all before it: a path may hold spaces (`air drumming/x.mp4 1`).
    fields = line.rsplit(maxsplit=1)
    if not fields:
      continue
    if len(fields) != 2:
      raise ValueError(f'{path}:{line_number}: expected "relative/path label", got {line.rstrip()!r}')
    video_path, label_text = fields[0].strip(), fields[1]
    odd_space = next((c for c in video_path if c.isspace() and c != " "), None)
    if odd_space is not None:
      # A tab, form feed, vertical tab, \x85...: more likely two lines glued than a file's name.
      raise ValueError(
        f'{path}:{line_number}: expected "relative/path label", got {line.rstrip()!r} (the path holds {odd_space!r})'
      )
    if re.fullmatch(r"-?[0-9]+", video_path.rsplit(maxsplit=1)[-1]):
      # `x.mp4 300 1`, as in lists of `path frames label`, or two labels: not a path ending in a number.
      raise ValueError(
        f'{path}:{line_number}: expected "relative/path label", got {line.rstrip()!r} (two numbers after the path)'
      )
    # Plain digits only: int() also takes "1_0" (10), "+1" and digits of other scripts.
    if not re.fullmatch(r"-?[0-9]+", label_text):
      raise ValueError(f"{path}:{line_number}: label {label_text!r} is not an integer")
    label = int(label_text)
    if not 0 <= label < num_classes:
      raise ValueError(f"{path}:{line_number}: label {label} is outside the label list of {num_classes} classes")
    # Compared as normalised paths (`./a.mp4` is `a.mp4`); each record keeps the path as its line spells it.
    first_path, first_label, first_line = first_seen.setdefault(
      same_video(video_path), (video_path, label, line_number)
    )
    if first_label != label:
      # Training would read two targets for one video, and an evaluation count it under both classes.
      as_first = f" (as {first_path})" if first_path != video_path else ""
      raise ValueError(
        f"{path}:{line_number}: {video_path} has label {label} here and label {first_label} on line {first_line}"
        f"{as_first}"
      )
    if first_line != line_number:
      repeats.append((line_number, first_line))
    records.append(VideoRecord(video_path, label))
  if not records:
    raise ValueError(f"{path}: the annotation file lists no videos")
  if repeats:
    logging.warning(
      "%s: %d lines repeat an earlier line (the first, line %d, repeats line %d); read as listed, so their videos "
      "count more than once",
      path,
      len(repeats),
      *repeats[0],
    )
  return records
