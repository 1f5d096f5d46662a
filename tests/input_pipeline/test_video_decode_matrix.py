"""Sampled decoding against a full decode, for the codecs and containers users have.

Frame i of a video is defined as the i-th frame that a plain PyAV decode of the
file yields. Every video here is small (64x48, 60 frames) and textured, so
every frame differs from its neighbours, and every sampled frame is compared
with the full decode pixel for pixel, for both sampling rules and T = 8, 16, 32.
The same videos then go through build_tfds.
"""

import io

import av
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import build_tfds
from input_pipeline import sampling
from input_pipeline import video_decode
from tests.fixtures import video_fixtures

NUM_FRAMES = 60
HEIGHT, WIDTH = 48, 64
# B-frames whatever the content (x264 and x265 otherwise decide per scene).
X264_B_FRAMES = {"x264-params": "b-adapt=0:bframes=3"}
X265_B_FRAMES = {"x265-params": "log-level=error:b-adapt=0:bframes=3"}
# libvpx codes hidden alt-ref frames in one pass only in VBR mode with a lag.
VP9_ALT_REF = {"lag-in-frames": "25", "auto-alt-ref": "1", "deadline": "realtime", "cpu-used": "8"}

ENCODERS = {
  "h264-8bit-420": dict(codec="libx264", options=X264_B_FRAMES, keyframe_interval=24),
  "h264-10bit-420": dict(codec="libx264", pix_fmt="yuv420p10le", options=X264_B_FRAMES, keyframe_interval=24),
  "h264-8bit-444": dict(codec="libx264", pix_fmt="yuv444p", options=X264_B_FRAMES, keyframe_interval=24),
  "hevc": dict(codec="libx265", options=X265_B_FRAMES, keyframe_interval=24),
  "vp8": dict(codec="libvpx", keyframe_interval=24),
  "vp9-alt-ref": dict(codec="libvpx-vp9", options=VP9_ALT_REF, bit_rate=300_000),
  "av1": dict(codec="libsvtav1"),
  "mpeg4": dict(codec="mpeg4", options={"bf": "2"}, keyframe_interval=24),
  "mjpeg": dict(codec="mjpeg", pix_fmt="yuvj420p"),
}
CONTAINERS = {
  "h264-8bit-420": ["mp4", "mkv", "mov", "avi"],
  "h264-10bit-420": ["mp4", "mkv"],
  "h264-8bit-444": ["mp4", "mov"],
  "hevc": ["mp4", "mkv"],
  "vp8": ["webm", "mkv"],
  "vp9-alt-ref": ["webm", "mp4", "mkv"],
  "av1": ["mp4", "webm", "mkv"],
  "mpeg4": ["avi", "mp4"],
  "mjpeg": ["avi", "mov", "mkv"],
}
FRAME_TIMES = np.cumsum([0] + [1 / 30, 1 / 10, 1 / 60, 1 / 15] * (NUM_FRAMES // 4))[:NUM_FRAMES]
# Videos whose stream or container is unusual in one way each.
SPECIAL = [
  "h264-audio-first.mp4",
  "h264-audio-first.mkv",
  "h264-variable-frame-rate.mkv",
  "h264-variable-frame-rate.mp4",
  "h264-cut-without-first-keyframe.mkv",
  "h264-edit-list-hides-first-frames.mp4",
  "mjpeg-size-changes.mkv",
  "vp8-size-changes.webm",
  "h264-phone-portrait.mp4",
  "vp9-rotated.webm",
]
VIDEOS = [f"{name}.{suffix}" for name, suffixes in CONTAINERS.items() for suffix in suffixes] + SPECIAL
# The track header matrix a phone writes when filming upright: the sensor's
# landscape picture is shown turned a quarter clockwise.
PHONE_PORTRAIT_MATRIX = [0, 1 << 16, 0, -(1 << 16), 0, 0, HEIGHT << 16, 0, 1 << 30]
# The fast path's codecs in containers with presentation timestamps.
PACKET_INDEXED = {
  name
  for name in VIDEOS
  if name.startswith(("h264", "hevc", "mpeg4", "mjpeg"))
  and name.endswith((".mp4", ".mkv", ".mov"))
  and "cut" not in name
  and "edit-list" not in name
}
SIZES = [(HEIGHT, WIDTH), (36, 80), (HEIGHT, WIDTH)]
# Rec. 601 luma weights (what the Y' plane of these videos holds, up to an offset and a scale).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _write(folder, name):
  path = folder / name
  stem = name.split(".")[0]
  if stem in ENCODERS:
    return video_fixtures.write_video(path, NUM_FRAMES, WIDTH, HEIGHT, **ENCODERS[stem])
  if stem == "h264-audio-first":
    return video_fixtures.write_video(path, NUM_FRAMES, WIDTH, HEIGHT, audio_first=True)
  if stem == "h264-variable-frame-rate":
    return video_fixtures.write_video(path, NUM_FRAMES, WIDTH, HEIGHT, options=X264_B_FRAMES, frame_times=FRAME_TIMES)
  if stem == "h264-cut-without-first-keyframe":
    source = video_fixtures.write_video(folder / "uncut.mp4", NUM_FRAMES, WIDTH, HEIGHT, keyframe_interval=10)
    return video_fixtures.remux(source, path, drop_first_packets=2)
  if stem == "h264-edit-list-hides-first-frames":
    source = video_fixtures.write_video(folder / "unedited.mp4", NUM_FRAMES, WIDTH, HEIGHT, options=X264_B_FRAMES)
    return video_fixtures.remux(source, path, shift_frames=3)
  if stem == "mjpeg-size-changes":
    return video_fixtures.write_video_changing_size(path, SIZES, "mjpeg", pix_fmt="yuvj420p")
  if stem == "vp8-size-changes":
    return video_fixtures.write_video_changing_size(path, SIZES, "libvpx")
  if stem == "h264-phone-portrait":
    return video_fixtures.set_mp4_display_matrix(video_fixtures.write_video(path), PHONE_PORTRAIT_MATRIX)
  if stem == "vp9-rotated":
    return video_fixtures.write_video(
      path, NUM_FRAMES, WIDTH, HEIGHT, codec="libvpx-vp9", display_rotation=(90, False, False)
    )
  raise ValueError(name)


def _full_decode(video_bytes, turn=True):
  """Every frame a plain PyAV decode yields, in RGB at the first frame's size, turned as PyAV says."""
  with av.open(io.BytesIO(video_bytes)) as container:
    frames = list(container.decode(video=0))
  height, width = frames[0].height, frames[0].width
  # frame.rotation is counterclockwise, as np.rot90 turns.
  return np.stack(
    [
      np.rot90(f.to_ndarray(format="rgb24", width=width, height=height), k=f.rotation // 90 if turn else 0)
      for f in frames
    ]
  )


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """name -> (file bytes, full decode)."""
  folder = tmp_path_factory.mktemp("matrix")
  result = {}
  for name in VIDEOS:
    video_bytes = _write(folder, name).read_bytes()
    result[name] = (video_bytes, _full_decode(video_bytes))
  return result


def _choose(rule, num_segments):
  if rule == "train":
    # Seeded by the count: a second call (after a recount) is reproducible.
    return lambda n: sampling.train_frame_indices(n, num_segments, np.random.default_rng([num_segments, n]))
  return lambda n: sampling.eval_frame_indices(n, num_segments)


@pytest.mark.parametrize("rule", ["train", "eval"])
@pytest.mark.parametrize("num_segments", [8, 16, 32], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", VIDEOS)
def test_sampled_frames_are_the_full_decodes_frames(videos, name, num_segments, rule):
  video_bytes, reference = videos[name]
  frames, indices = video_decode.decode_sampled_frames(video_bytes, _choose(rule, num_segments))
  np.testing.assert_array_equal(indices, _choose(rule, num_segments)(len(reference)))
  assert frames.shape == (num_segments, *reference.shape[1:])
  for position, index in enumerate(indices):
    np.testing.assert_array_equal(frames[position], reference[index], err_msg=f"frame {index}")


@pytest.mark.parametrize("name", VIDEOS)
def test_frame_count_is_the_full_decodes(videos, name):
  video_bytes, reference = videos[name]
  assert video_decode.count_frames(video_bytes) == len(reference)


@pytest.mark.parametrize("name", VIDEOS)
def test_fast_path_serves_the_codecs_it_is_exact_for(videos, name):
  # The H.264 fast path is what keeps training input fast; the rest must be exact.
  video = video_decode._Video(videos[name][0])
  video.close()
  assert video.is_packet_indexed == (name in PACKET_INDEXED)


@pytest.mark.parametrize("name", sorted(PACKET_INDEXED))
def test_fast_path_decodes_its_videos_without_falling_back(videos, name, monkeypatch):
  # Its results equal the exact path's, so only a fallback that fails shows that the fast path did the work.
  def no_fallback(*args, **kwargs):
    raise AssertionError("fell back to the exact path")

  monkeypatch.setattr(video_decode._Video, "decode_every_frame", no_fallback)
  video_bytes, reference = videos[name]
  frames, indices = video_decode.decode_sampled_frames(video_bytes, _choose("train", 16))
  np.testing.assert_array_equal(frames, reference[indices])


def _packets(video_bytes):
  with av.open(io.BytesIO(video_bytes)) as container:
    return [p for p in container.demux(container.streams.video[0]) if p.size]


def _stream_types(video_bytes):
  with av.open(io.BytesIO(video_bytes)) as container:
    return [s.type for s in container.streams]


def _coded_frames(video_bytes, split_filter):
  """Frames in the stream, hidden ones included (the filter splits packets)."""
  with av.open(io.BytesIO(video_bytes)) as container:
    stream = container.streams.video[0]
    splitter = av.bitstream.BitStreamFilterContext(split_filter, stream)
    return sum(len(splitter.filter(p)) for p in container.demux(stream) if p.size)


def _has_b_frames(video_bytes):
  with av.open(io.BytesIO(video_bytes)) as container:
    return any(f.pict_type == av.video.frame.PictureType.B for f in container.decode(video=0))


def test_the_videos_are_as_hard_as_their_names_say(videos):
  for name in VIDEOS:
    if name.startswith(("h264-8bit", "h264-10bit", "hevc", "mpeg4", "h264-variable", "h264-edit")):
      assert _has_b_frames(videos[name][0]), name
  for suffix in ("mp4", "mkv"):
    assert _stream_types(videos[f"h264-audio-first.{suffix}"][0]) == ["audio", "video"]
  for name in ("vp9-alt-ref.webm", "vp9-alt-ref.mp4", "vp9-alt-ref.mkv"):
    assert _coded_frames(videos[name][0], "vp9_superframe_split") > NUM_FRAMES, name
  for name in ("av1.mp4", "av1.webm", "av1.mkv"):
    assert _coded_frames(videos[name][0], "av1_frame_split") > NUM_FRAMES, name
  for suffix in ("mkv", "mp4"):
    packets = _packets(videos[f"h264-variable-frame-rate.{suffix}"][0])
    assert len(set(np.diff(sorted(p.pts for p in packets)))) > 2
  packets = _packets(videos["h264-cut-without-first-keyframe.mkv"][0])
  assert not packets[0].is_keyframe and len(videos["h264-cut-without-first-keyframe.mkv"][1]) < len(packets)
  packets = _packets(videos["h264-edit-list-hides-first-frames.mp4"][0])
  assert sum(p.is_discard for p in packets) == 3 and len(videos["h264-edit-list-hides-first-frames.mp4"][1]) == 57


def _bilinear(image, height, width):
  """PIL's bilinear resize of a 2-D image, in float32 (no rounding)."""
  resized = PIL.Image.fromarray(image.astype(np.float32)).resize((width, height), PIL.Image.Resampling.BILINEAR)
  return np.asarray(resized)


@pytest.mark.parametrize("name", ["mjpeg-size-changes.mkv", "vp8-size-changes.webm"])
def test_frames_of_another_size_are_resized_to_the_first(videos, name):
  # Frames of another size come out at the first frame's size: the whole picture, resized bilinearly (swscale's
  # default, through PyAV's reformat), not cropped, transposed or resized by nearest neighbour.
  video_bytes, _ = videos[name]
  with av.open(io.BytesIO(video_bytes)) as container:
    originals = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  frames = video_decode.decode_frames(video_bytes, range(NUM_FRAMES))
  assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
  assert [o.shape[:2] for o in originals] == [size for size in SIZES for _ in range(NUM_FRAMES // len(SIZES))]
  for index, (frame, original) in enumerate(zip(frames, originals)):
    if original.shape == frame.shape:
      np.testing.assert_array_equal(frame, original, err_msg=f"frame {index}")
      continue
    # swscale resizes the stored Y'CbCr planes (chroma at half resolution) and converts to RGB after; the reference
    # resizes the luma of the frame converted at its stored size. Luma is linear in Y', so the two differ by the 8-bit
    # rounding of each step and by RGB values clipped at 0 or 255: below 0.8 on average and 3 at any pixel on these
    # videos. Nearest-neighbour sampling differs by 2 on average and 8 at some pixel of the MJPEG video, a crop by 4.
    error = np.abs(frame.astype(np.float32) @ LUMA - _bilinear(original @ LUMA, HEIGHT, WIDTH))
    assert error.mean() < 1.0 and error.max() < 4, (index, error.mean(), error.max())
    # Colour too: the chroma planes are resized alike.
    np.testing.assert_allclose(frame.mean(axis=(0, 1)), original.mean(axis=(0, 1)), atol=3, err_msg=f"frame {index}")


# Display rotation (phone videos).


@pytest.mark.parametrize(
  "name,degrees",
  [
    ("h264.mp4", 90),
    ("h264.mp4", 180),
    ("h264.mp4", -90),
    ("h264.mov", 90),
    ("h264.mkv", -90),
    ("vp9.webm", -90),
    ("av1.mp4", 90),
  ],
)
def test_frames_come_out_upright(tmp_path, name, degrees):
  stem, suffix = name.split(".")
  encoder = {"h264": {}, "vp9": ENCODERS["vp9-alt-ref"], "av1": ENCODERS["av1"]}[stem]
  path = video_fixtures.write_video(
    tmp_path / f"rotated.{suffix}", 20, WIDTH, HEIGHT, display_rotation=(degrees, False, False), **encoder
  )
  video_bytes = path.read_bytes()
  # PyAV's rotation is counterclockwise, as np.rot90 turns.
  upright = np.rot90(_full_decode(video_bytes, turn=False), k=degrees // 90, axes=(1, 2))
  frames, indices = video_decode.decode_sampled_frames(video_bytes, lambda n: sampling.eval_frame_indices(n, 8))
  np.testing.assert_array_equal(frames, upright[indices])


def test_phone_portrait_video_is_turned_clockwise(tmp_path):
  path = video_fixtures.write_video(tmp_path / "portrait.mp4", 20, WIDTH, HEIGHT)
  stored = _full_decode(path.read_bytes())
  video_fixtures.set_mp4_display_matrix(path, PHONE_PORTRAIT_MATRIX)
  frames = video_decode.decode_frames(path.read_bytes(), [0, 19])
  assert frames.shape == (2, WIDTH, HEIGHT, 3)
  np.testing.assert_array_equal(frames, np.rot90(stored[[0, 19]], k=-1, axes=(1, 2)))
  # The stored picture's top left corner ends up top right.
  np.testing.assert_array_equal(frames[:, 0, -1], stored[[0, 19], 0, 0])


# Matrices (a, b, u, c, d, v, x, y, w) that mirror: a stored pixel (x, y) is shown at (a x + c y, b x + d y) plus a
# shift (ISO/IEC 14496-12), so the shown picture, by hand, is the stored one:
MIRRORS = {
  "left-right": ([-(1 << 16), 0, 0, 0, 1 << 16, 0, WIDTH << 16, 0, 1 << 30], lambda stored: stored[:, :, ::-1]),
  "upside-down": ([1 << 16, 0, 0, 0, -(1 << 16), 0, 0, HEIGHT << 16, 1 << 30], lambda stored: stored[:, ::-1]),
  # shown (y, x): row x, column y
  "transposed": ([0, 1 << 16, 0, 1 << 16, 0, 0, 0, 0, 1 << 30], lambda stored: stored.transpose(0, 2, 1, 3)),
}


@pytest.mark.parametrize("name", MIRRORS)
def test_mirrored_video_is_shown_as_players_show_it(tmp_path, name):
  matrix, shown = MIRRORS[name]
  path = video_fixtures.write_video(tmp_path / "mirrored.mp4", 20, WIDTH, HEIGHT)
  stored = _full_decode(path.read_bytes())
  video_fixtures.set_mp4_display_matrix(path, matrix)
  np.testing.assert_array_equal(video_decode.decode_frames(path.read_bytes(), [0, 19]), shown(stored[[0, 19]]))


def test_stream_without_a_decoder_is_an_unreadable_video(tmp_path):
  path = video_fixtures.write_video(tmp_path / "video.mkv", 5, WIDTH, HEIGHT)
  # A damaged codec id: the container opens, but no decoder takes the stream.
  damaged = path.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC")
  with pytest.raises(video_decode.VideoDecodeError, match="no decoder for the video stream's codec"):
    video_decode.count_frames(damaged)


def test_an_album_cover_is_not_a_video(tmp_path):
  path = video_fixtures.write_audio_only(tmp_path / "song.mp4", cover_picture=True)
  with pytest.raises(video_decode.VideoDecodeError, match="^the file has no video stream, only a cover picture$"):
    video_decode.count_frames(path.read_bytes())


def _picture(image_format: str) -> bytes:
  picture = io.BytesIO()
  PIL.Image.fromarray(np.full((HEIGHT, WIDTH, 3), 90, np.uint8)).save(picture, format=image_format)
  return picture.getvalue()


@pytest.mark.parametrize("image_format, name", [("PNG", "png"), ("JPEG", "jpeg")])
def test_a_picture_renamed_mp4_is_not_a_video(image_format, name):
  with pytest.raises(video_decode.VideoDecodeError, match=rf"^a still picture \({name}\), not a video$"):
    video_decode.count_frames(_picture(image_format))


def test_pictures_one_after_another_are_a_video():  # motion JPEG without a container
  assert video_decode.count_frames(_picture("JPEG") * 3) == 3


def test_an_mp4_cut_short_after_its_index_is_truncated_not_shorter(tmp_path):
  # A download cut short: the index at the front lists all 30 frames, the file holds the first ones only.
  source = video_fixtures.write_video(tmp_path / "video.mp4", 30, WIDTH, HEIGHT)
  streaming = video_fixtures.remux(source, tmp_path / "streaming.mp4", index_first=True)
  intact = streaming.read_bytes()
  assert video_decode.count_frames(intact) == 30
  with pytest.raises(video_decode.VideoDecodeError, match=r"^truncated: \d+ of the 30 frames its index lists"):
    video_decode.count_frames(intact[: len(intact) * 2 // 3])


@pytest.mark.parametrize("name, codec", [("video.mkv", "libx264"), ("video.webm", "libvpx-vp9")])
def test_a_matroska_file_cut_short_is_truncated_not_shorter(tmp_path, name, codec):
  # FFmpeg's muxer lists the stream's DURATION at the start: 60 frames at 30 fps, 2 s.
  intact = video_fixtures.write_video(tmp_path / name, 60, WIDTH, HEIGHT, codec=codec).read_bytes()
  assert video_decode.count_frames(intact) == 60
  with pytest.raises(video_decode.VideoDecodeError, match=r"^truncated: its frames end at 0\.\d\d s of the 2\.00 s"):
    video_decode.count_frames(intact[: len(intact) // 3])


# The same frames through build_tfds.


@pytest.fixture(scope="module")
def records(videos, tmp_path_factory):
  """path -> example of a build_tfds split of every video, stored at high quality."""
  root = tmp_path_factory.mktemp("tfds_videos")
  for name in VIDEOS:
    (root / name).write_bytes(videos[name][0])
  (root / "labels.csv").write_text("id,name\n0,video\n")
  (root / "all.txt").write_text("".join(f"{name} 0\n" for name in VIDEOS))
  builder = build_tfds.build_split(
    annotations_path=str(root / "all.txt"),
    root=str(root),
    labels_path=str(root / "labels.csv"),
    output_dir=str(tmp_path_factory.mktemp("tfds")),
    jpeg_quality=98,
    max_bad_fraction=0.0,
  )
  dataset = builder.as_dataset(split="train", decoders={"frames": tfds.decode.SkipDecoding()})
  return {example["path"].decode(): example for example in dataset.as_numpy_iterator()}


@pytest.mark.parametrize("name", VIDEOS)
def test_build_tfds_stores_the_full_decodes_frames(videos, records, name):
  _, reference = videos[name]
  example = records[name]
  assert example["num_frames"] == len(reference)
  stored = np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in example["frames"]]).astype(np.float32)
  # JPEG changes pixels a little; each stored frame is still nearest to its own source frame.
  distances = np.abs(stored[:, None] - reference[None].astype(np.float32)).mean(axis=(2, 3, 4))
  np.testing.assert_array_equal(distances.argmin(axis=1), np.arange(len(reference)))
  assert distances.diagonal().max() < 4
