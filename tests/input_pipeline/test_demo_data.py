"""Tests for input_pipeline.demo_data: the demo's videos show what README.md ("The demo") says they show.

The change each class shows is measured on the rendered frames themselves, knowing nothing of how demo_data draws
them: a video is one flat-coloured shape with a soft outline on a dark background, so the shape's colour is the most
common colour among the bright pixels of its middle frame, and its interior is the set of pixels of exactly that
colour. Where a measurement needs the background under the shape, it is read where the shape is not.
"""

import itertools
import pathlib

import numpy as np
import pytest

from input_pipeline import annotations
from input_pipeline import demo_data
from input_pipeline import video_decode

SETTINGS = demo_data.Settings(num_train=6, num_val=2, num_test=7, seed=3)
HEIGHT, WIDTH = demo_data.HEIGHT, demo_data.WIDTH
# Pixel centres, (HEIGHT * WIDTH, 2) as (y, x).
PIXELS = np.stack(np.mgrid[0:HEIGHT, 0:WIDTH], axis=-1).reshape(-1, 2).astype(np.float64)
# In the middle frame of every class the background is dark (no channel above 100) and the shape bright (its
# brightest channel 130 or more; measured on 1,800 videos): pixels at or above this level there are the shape's.
BRIGHT = 128
# Pixels the shape touches lie within this distance of its interior (4.5 pixels at the tips of its sharpest corners).
OUTLINE = 5


def _rendered(name: str, count: int, seed: int = 11) -> list[np.ndarray]:
  """`count` videos (N, H, W, 3) int of class `name`, each from a generator of its own."""
  label = demo_data.CLASS_NAMES.index(name)
  return [demo_data.render(label, np.random.default_rng([seed, label, i])).astype(np.int64) for i in range(count)]


def _mode(pixels: np.ndarray) -> np.ndarray:
  """The most common RGB triple among (..., 3) pixels."""
  colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
  return colours[counts.argmax()]


def _shape_colour(frame: np.ndarray) -> np.ndarray:
  """The shape's flat colour: the most common colour among the bright pixels."""
  return _mode(frame[frame.max(axis=-1) >= BRIGHT])


def _interior(frame: np.ndarray, colour: np.ndarray) -> np.ndarray:
  """(H, W) bool: the pixels of exactly the shape's colour."""
  return (frame == colour).all(axis=-1)


def _in_view(mask: np.ndarray, margin: int = 1) -> bool:
  """Whether `mask` keeps `margin` pixels from the frame's edges: 1 for an interior that the frame does not cut."""
  ys, xs = np.nonzero(mask)
  return ys.size > 0 and min(ys.min(), xs.min()) >= margin and ys.max() < HEIGHT - margin and xs.max() < WIDTH - margin


def _centroid(mask: np.ndarray) -> np.ndarray:
  return np.argwhere(mask).mean(axis=0)


def _distance_to(mask: np.ndarray) -> np.ndarray:
  """(H, W): each pixel's distance to the nearest pixel of `mask`, where at most OUTLINE (farther: inf)."""
  distance = np.full(mask.shape, np.inf)
  padded = np.pad(mask, OUTLINE)
  for dy, dx in itertools.product(range(-OUTLINE, OUTLINE + 1), repeat=2):
    if np.hypot(dy, dx) <= OUTLINE:
      shifted = padded[OUTLINE + dy : OUTLINE + dy + HEIGHT, OUTLINE + dx : OUTLINE + dx + WIDTH]
      distance[shifted] = np.minimum(distance[shifted], np.hypot(dy, dx))
  return distance


def _assert_background_unchanged(first: np.ndarray, last: np.ndarray, *masks: np.ndarray):
  """Pixels away from the shape in both frames are the same in both."""
  away = np.all([_distance_to(mask) > OUTLINE for mask in masks], axis=0)
  np.testing.assert_array_equal(first[away], last[away])


def _coverage(image: np.ndarray, colour: np.ndarray, background: np.ndarray) -> np.ndarray:
  """(H, W) in [0, 1]: how much of each pixel the shape covers, the pixel being a blend of background and colour."""
  towards = colour - background
  covered = 1 - ((colour - image) * towards).sum(-1) / np.maximum((towards**2).sum(-1), 1e-9)
  return np.clip(covered, 0, 1)


def test_a_sliding_shape_moves_22_to_30_pixels_in_any_direction():
  # README: "a shape sliding | its position, by 22-30 pixels in any direction".
  moves = []
  for video in _rendered("a shape sliding", 120):
    colour = _shape_colour(video[len(video) // 2])
    first, last = _interior(video[0], colour), _interior(video[-1], colour)
    if not (_in_view(first) and _in_view(last)):
      continue  # partly out of the frame: its centroid is not the shape's
    moves.append(_centroid(last) - _centroid(first))
    # Nothing else changes: its size (up to the pixel grid) and the background.
    assert abs(first.sum() / last.sum() - 1) < 0.15
    _assert_background_unchanged(video[0], video[-1], first, last)
  assert len(moves) >= 20
  # The interior's centroid follows the shape to within 0.75 pixels, as the pixel grid cuts the interior a little
  # differently at each position (0.7 at worst, measured on 500 videos).
  distances = np.linalg.norm(moves, axis=1)
  assert distances.min() >= 22 - 0.75 and distances.max() <= 30 + 0.75, distances
  # In any direction: up and down, left and right.
  assert {(bool(dy > 0), bool(dx > 0)) for dy, dx in moves} == {
    (False, False),
    (False, True),
    (True, False),
    (True, True),
  }


def test_a_growing_or_shrinking_shape_changes_size_by_2_4_to_3_times():
  # README: "a shape growing or shrinking | its size, by a factor of 2.4-3".
  factors = []
  for video in _rendered("a shape growing or shrinking", 80):
    colour = _shape_colour(video[len(video) // 2])
    masks = [_interior(video[0], colour), _interior(video[-1], colour)]
    if not all(_in_view(mask, OUTLINE) for mask in masks):
      continue  # the frame cuts the shape
    small = int(masks[1].sum() < masks[0].sum())
    large = 1 - small
    _assert_background_unchanged(video[0], video[-1], *masks)
    # Size as area: how much of each pixel the shape covers, summed. The background is what a pixel shows in the
    # frame where it is least like the shape; under the small shape and its outline (3 pixels around its interior)
    # no frame shows it, so there it is taken from the 2 pixels around that, weighted by nearness.
    least_like = np.linalg.norm(video - colour, axis=-1).argmax(axis=0)
    background = np.take_along_axis(video, least_like[None, ..., None], axis=0)[0].astype(np.float64)
    near = _distance_to(masks[small])
    hidden, ring = near <= 3, (near > 3) & (near <= 5)
    squared = ((PIXELS[hidden.reshape(-1)][:, None] - PIXELS[ring.reshape(-1)][None]) ** 2).sum(-1)
    weights = 1 / (squared + 1e-3) ** 2
    background[hidden] = weights @ background[ring] / weights.sum(axis=1, keepdims=True)
    areas = [_coverage(video[i], colour, background).sum() for i in (0, -1)]
    factors.append(np.sqrt(areas[large] / areas[small]))
  assert len(factors) >= 15
  # A soft outline sampled on the pixel grid, and the background estimated under the small shape's: the factor comes
  # out within 8% (measured: 5.7% at worst, on 150 videos).
  assert min(factors) >= 2.4 * 0.92 and max(factors) <= 3.0 * 1.08, factors


def test_a_shape_getting_brighter_or_darker_changes_by_70_to_90_percent_of_full_brightness():
  # README: "a shape getting brighter or darker | its brightness, by 70-90% of full brightness". Full brightness is
  # the shape's colour scaled up until its brightest channel is 255. The colour is scaled as a whole, by 70-90% of
  # that, but a channel stops at 255: most videos reach it at their bright end, and there the brightest channel
  # changes by less, by 50% at least (README does not say so).
  measured, visible = [], []
  for video in _rendered("a shape getting brighter or darker", 40):
    middle = video[len(video) // 2]
    colour = _shape_colour(middle)
    shape = _interior(middle, colour)
    ends = [video[0][shape], video[-1][shape]]
    # Nothing else changes: the shape stays in place (its interior has one colour in every frame), the background too.
    for pixels in ends:
      assert (pixels == _mode(pixels)).all(axis=-1).mean() > 0.9
    _assert_background_unchanged(video[0], video[-1], shape)
    dark, bright = sorted((_mode(pixels) for pixels in ends), key=lambda c: c.max())
    full = colour * 255 / colour.max()
    visible.append((bright.max() - dark.max()) / 255)
    # The change of the scale of the colour, read where a channel is neither at 255 nor too dim to measure.
    usable = (bright < 255) & (full >= 64)
    if usable.any():
      channel = np.flatnonzero(usable)[full[usable].argmax()]
      measured.append((bright[channel] - dark[channel]) / full[channel])
  assert len(measured) >= 30
  # 8-bit rounding of both ends, against a channel of full brightness 64 or more: 0.01.
  assert min(measured) >= 0.69 and max(measured) <= 0.91, measured
  assert min(visible) >= 0.5 and max(visible) <= 0.91, visible


def _circle(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The least-squares circle through (N, 2) points: its centre and each point's distance from it."""
  design = np.concatenate([2 * points, np.ones((len(points), 1))], axis=1)
  centre = np.linalg.lstsq(design, (points**2).sum(axis=1), rcond=None)[0][:2]
  return centre, np.linalg.norm(points - centre, axis=1)


def test_a_shaking_shape_is_4_to_6_pixels_off_its_place_in_a_new_direction_every_frame():
  # README: "a shape shaking | its position, by 4-6 pixels in a new direction every frame". Its place at rest is
  # never shown: it is the centre of the circle on which the shape's positions lie.
  radii = []
  for video in _rendered("a shape shaking", 30):
    colour = _shape_colour(video[len(video) // 2])
    masks = [_interior(frame, colour) for frame in video]
    if not all(_in_view(mask) for mask in masks):
      continue
    centre, distances = _circle(np.array([_centroid(mask) for mask in masks]))
    radii.append(distances)
    directions = np.arctan2(*(np.array([_centroid(mask) for mask in masks]) - centre).T)
    turns = np.abs(np.angle(np.exp(1j * np.diff(directions))))
    assert np.mean(turns > np.radians(10)) > 0.75, np.degrees(turns)
    _assert_background_unchanged(video[0], video[-1], *masks)
  assert len(radii) >= 15
  radii = np.concatenate(radii)
  # Each position to within 0.75 pixels, as the sliding shape's (0.55 at worst, measured on 500 videos).
  assert radii.min() >= 4 - 0.75 and radii.max() <= 6 + 0.75, radii


def test_the_background_getting_brighter_or_darker_changes_only_the_background():
  # README: "the background getting brighter or darker | the background's brightness": the shape stays as it is.
  for video in _rendered("the background getting brighter or darker", 20):
    middle = video[len(video) // 2]
    colour = _shape_colour(middle)
    shape = _interior(middle, colour)
    # The shape's colour, in the same place, in the first and last frames (but for the pixels at the interior's edge,
    # which the outline blends a little with the background).
    core, beyond = _distance_to(~shape) > 1, _distance_to(shape) > 1
    for end in (video[0], video[-1]):
      assert _interior(end, colour)[core].all() and not _interior(end, colour)[beyond].any()
    away = _distance_to(shape) > OUTLINE
    dark, bright = sorted([video[0][away].mean(), video[-1][away].mean()])
    assert bright > 2 * dark, (dark, bright)


def test_a_shape_standing_still_changes_nothing():
  # README: "a shape standing still | nothing".
  for video in _rendered("a shape standing still", 20):
    assert (video == video[0]).all()


def test_videos_are_drawn_from_their_seed():
  first = demo_data.render(2, np.random.default_rng([0, 0, 5]))
  np.testing.assert_array_equal(first, demo_data.render(2, np.random.default_rng([0, 0, 5])))


def _decode_all(path) -> np.ndarray:
  data = pathlib.Path(path).read_bytes()
  return video_decode.decode_sampled_frames(data, lambda total: np.arange(total))[0].astype(np.int64)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  directory = tmp_path_factory.mktemp("demo_data")
  demo_data.write(directory, SETTINGS)
  return directory


def test_write_is_reproducible_byte_for_byte(written, tmp_path):
  # Every rerun of the demo (another workdir, another machine) trains on the same data.
  demo_data.write(tmp_path, SETTINGS)
  videos = sorted(path.relative_to(written) for path in (written / "videos").rglob("*.mp4"))
  assert len(videos) == 6 + 2 + 2 * 7
  assert [path for path in videos if (written / path).read_bytes() != (tmp_path / path).read_bytes()] == []


def test_write_lays_out_the_official_files(written):
  names = annotations.read_label_list(written / "labels.csv")
  assert tuple(names) == demo_data.CLASS_NAMES
  for split in demo_data.SPLITS:
    records = annotations.read_annotations(written / f"{split}.txt", len(names))
    assert len(records) == SETTINGS.count(split)
    assert [r.label for r in records] == [i % len(names) for i in range(len(records))]
  test = annotations.read_annotations(written / "test.txt", len(names))
  control = annotations.read_annotations(written / f"{demo_data.SINGLE_FRAME}.txt", len(names))
  assert [r.label for r in control] == [r.label for r in test]


def test_the_splits_come_from_disjoint_seeds(written):
  # README: "The train, validation and held-out test splits come from disjoint seeds": no video of the data is
  # another's, within a split or across splits (video i of each split has the same class).
  middles = {}
  for split in demo_data.SPLITS:
    for record in annotations.read_annotations(written / f"{split}.txt", len(demo_data.CLASS_NAMES)):
      frames = _decode_all(written / "videos" / record.path)
      middles[record.path] = frames[len(frames) // 2]
  assert len(middles) == SETTINGS.num_train + SETTINGS.num_val + SETTINGS.num_test
  # The same video decodes to the same frames; two drawn apart differ by 12 or more on average (the backgrounds).
  for (a, frame_a), (b, frame_b) in itertools.combinations(middles.items(), 2):
    assert np.abs(frame_a - frame_b).mean() > 4, (a, b)


def test_the_single_frame_control_repeats_the_middle_frame_of_its_test_video(written):
  # README: the control is "the test videos with their middle frame repeated, so that nothing moves".
  names = demo_data.CLASS_NAMES
  test = annotations.read_annotations(written / "test.txt", len(names))
  control = annotations.read_annotations(written / f"{demo_data.SINGLE_FRAME}.txt", len(names))
  for original, copy in zip(test, control):
    moving, still = _decode_all(written / "videos" / original.path), _decode_all(written / "videos" / copy.path)
    assert still.shape == moving.shape  # as many frames, so that sampling takes the same positions
    # H.264 codes a repeated picture as itself plus small corrections: decoded, two frames of a control differ by
    # less than 0.5 on average (0.44 at most, measured on 120 controls). Another frame of a sliding, growing,
    # brightening or lighting video differs from the middle one by more: its first and last by 1.3 or more.
    pairwise = np.abs(still[:, None] - still[None]).mean(axis=(2, 3, 4))
    assert pairwise.max() < 1, (copy.path, pairwise.max())
    # Each is a separate lossy coding of the same picture: 2.1 apart at most on average (measured on 120 controls).
    # A control of another frame shows where that frame differs from the middle one by more than the coding does
    # (the first frame of a sliding or lighting video: by 4 or more).
    to_middle = np.abs(still - moving[len(moving) // 2]).mean(axis=(1, 2, 3))
    assert to_middle.max() < 3, (copy.path, to_middle.max())


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_split_of_no_videos_is_refused_naming_its_field(split):
  counts = {"num_train": 4, "num_val": 2, "num_test": 2, f"num_{split}": -5}
  with pytest.raises(ValueError, match=f"^config.demo.num_{split}=-5 must be at least 1$"):
    demo_data.Settings(**counts, seed=0)
