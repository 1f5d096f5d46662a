"""A NumPy reference of the official X-CLIP blending (microsoft/VideoX X-CLIP datasets/blending.py,
CutmixMixupBlending), for given draws, and a reader of the draws a blend made, from its input and output videos.

Written from the official maths, not copied: labels become one-hot vectors with off = s / K and on = 1 - s + s / K;
Mixup mixes videos and labels with one lam; CutMix pastes the partner's box (rand_bbox: sides int(W * sqrt(1 - lam))
and int(H * sqrt(1 - lam)) around the centre, each end clipped to the frame) into every frame and weights the labels by
1 - box area / frame area. Arithmetic is float32, as the official tensors are. Videos are channels-last here,
(B, T, H, W, C); the official (B, T, C, H, W) has H and W as its last two axes, as these are axes 2 and 3 here.
"""

import numpy as np


def smoothed_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """The official one_hot(label, num_classes, on_value, off_value) with the smoothing's on and off values."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  soft = np.full((len(labels), num_classes), off, np.float32)
  soft[np.arange(len(labels)), labels] = on
  return soft


def rand_bbox(height: int, width: int, lam: float, centre) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the official rand_bbox for the Beta draw `lam` and the box centre (row, column)."""
  cut_ratio = np.sqrt(np.float32(1.0) - np.float32(lam))  # float32, as torch.sqrt(1. - lam) of a float32 draw
  cut_width, cut_height = int(width * cut_ratio), int(height * cut_ratio)
  centre_y, centre_x = int(centre[0]), int(centre[1])
  left, right = np.clip([centre_x - cut_width // 2, centre_x + cut_width // 2], 0, width)
  top, bottom = np.clip([centre_y - cut_height // 2, centre_y + cut_height // 2], 0, height)
  return int(top), int(bottom), int(left), int(right)


def blend(videos, soft_labels, *, cutmix: bool, partner, lam: float | None = None, box=None):
  """The official do_cutmix / do_mixup for these draws: (mixed videos, mixed labels).

  Mixup takes `lam`; CutMix takes the `box` (top, bottom, left, right) that rand_bbox made.
  """
  videos, soft_labels = np.asarray(videos), np.asarray(soft_labels, np.float32)
  partner = np.asarray(partner)
  if cutmix:
    top, bottom, left, right = box
    height, width = videos.shape[2], videos.shape[3]
    mixed = videos.copy()
    mixed[:, :, top:bottom, left:right] = videos[partner][:, :, top:bottom, left:right]
    lam = np.float32(1.0 - (bottom - top) * (right - left) / (height * width))
  else:
    lam = np.float32(lam)
    mixed = lam * videos + (np.float32(1.0) - lam) * videos[partner]
  return mixed, lam * soft_labels + (np.float32(1.0) - lam) * soft_labels[partner]


def read_blend(original: np.ndarray, mixed: np.ndarray, atol: float = 1e-5) -> list[dict]:
  """For each mixed video, what made it from `original` (random videos, so that every video is recognisable):
  {"partner": index into original, "kind": None (the video itself), "mixup" (with "lam") or "cutmix" (with "box")}.

  Every other video of the batch is a candidate partner, so a pairing outside any intended group shows.
  """
  original, mixed = np.asarray(original, np.float64), np.asarray(mixed, np.float64)
  readings = []
  for b in range(len(original)):
    if np.allclose(mixed[b], original[b], rtol=0, atol=atol):
      readings.append({"partner": b, "kind": None})
      continue
    changed = (mixed[b] != original[b]).any(axis=(0, 3))  # (H, W): pixels that differ in some frame or channel
    reading = None
    for p in range(len(original)):
      if p == b:
        continue
      pasted = np.where(changed[None, :, :, None], original[p], original[b])
      if np.array_equal(mixed[b], pasted):
        rows, cols = np.nonzero(changed)
        box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        rectangle = np.zeros_like(changed)
        rectangle[box[0] : box[1], box[2] : box[3]] = True
        assert np.array_equal(changed, rectangle), f"video {b}: the pasted pixels are no rectangle"
        reading = {"partner": p, "kind": "cutmix", "box": box}
        break
      difference = original[b] - original[p]
      lam = np.sum((mixed[b] - original[p]) * difference) / np.sum(difference**2)
      if np.allclose(mixed[b], lam * original[b] + (1 - lam) * original[p], rtol=0, atol=atol):
        reading = {"partner": p, "kind": "mixup", "lam": float(lam)}
        break
    assert reading is not None, f"video {b} is no blend of two videos of the batch"
    readings.append(reading)
  return readings


def assert_official_blend(videos, labels, mixed_videos, mixed_labels, num_classes: int, smoothing: float, groups):
  """Asserts that each group of rows (e.g. each device's slice of the batch) was blended on its own as the official
  code blends a batch, with the draws read back from the videos: one method, one lam or box, one permutation of the
  group's videos; videos and smoothed labels then as the reference computes them. Returns each group's method
  ("mixup", "cutmix", or None where no video changed)."""
  readings = read_blend(videos, mixed_videos)
  soft = smoothed_one_hot(np.asarray(labels), num_classes, smoothing)
  kinds = []
  for rows in groups:
    rows = np.sort(np.asarray(rows))
    group = [readings[row] for row in rows]
    partner = np.array([reading["partner"] for reading in group])
    outside = sorted(set(partner.tolist()) - set(rows.tolist()))
    assert not outside, f"videos {rows.tolist()} are blended with videos {outside} outside their group"
    np.testing.assert_array_equal(np.sort(partner), rows, err_msg="the partners are no permutation of the group")
    kind = {reading["kind"] for reading in group} - {None}
    assert len(kind) <= 1, f"group {rows.tolist()} mixes methods {kind}"
    kind = kind.pop() if kind else None
    blended = [reading for reading in group if reading["kind"]]
    if kind == "cutmix":
      boxes = {reading["box"] for reading in blended}
      assert len(boxes) == 1, f"group {rows.tolist()} has several boxes {boxes}"
      draws = dict(cutmix=True, box=boxes.pop())
    else:
      lams = [reading["lam"] for reading in blended] or [1.0]  # nothing changed: an identity permutation
      assert np.ptp(lams) < 1e-5, f"group {rows.tolist()} has several lam {lams}"
      draws = dict(cutmix=False, lam=float(np.mean(lams)))
    expected_videos, expected_labels = blend(
      np.asarray(videos)[rows], soft[rows], partner=np.searchsorted(rows, partner), **draws
    )
    np.testing.assert_allclose(np.asarray(mixed_videos)[rows], expected_videos, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mixed_labels)[rows], expected_labels, rtol=0, atol=1e-6)
    kinds.append(kind)
  return kinds
