"""Writes small synthetic videos whose frames tell their own index.

Frame i of a video from write_indexed_video is a flat grey image of level
frame_level(i); frame_index_of(frame) reads the index back after lossy
coding. write_textured_video makes benchmark-like footage instead, and
write_video the same kind of footage with any encoder, container, pixel
format, frame timing or display rotation; write_video_changing_size, remux
and set_mp4_display_matrix make the rarer streams users have.
"""

from collections.abc import Sequence
import fractions
import os
import pathlib
import struct
import tarfile

import av
import numpy as np

_LEVEL_OFFSET = 8
_LEVEL_STEP = 4
MAX_INDEXED_FRAMES = (255 - _LEVEL_OFFSET) // _LEVEL_STEP + 1
_EMPTY_HEIGHT, _EMPTY_WIDTH = 48, 64
_VFR_TIME_BASE = fractions.Fraction(1, 1000)


def frame_level(index: int) -> int:
  """Grey level of frame `index` of an indexed video."""
  return _LEVEL_OFFSET + _LEVEL_STEP * index


def frame_index_of(frame: np.ndarray) -> int:
  """Index of a decoded frame of an indexed video (from its mean level)."""
  return int(round((float(np.mean(frame)) - _LEVEL_OFFSET) / _LEVEL_STEP))


def _write(
  path,
  frames,
  fps,
  codec,
  keyframe_interval,
  bit_rate=None,
  pix_fmt="yuv420p",
  options=None,
  frame_times=None,
  audio_first=False,
  display_rotation=None,
):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), mode="w") as container:
    audio = container.add_stream("aac", rate=8000) if audio_first else None
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.height, stream.width = frames[0].shape[:2] if frames else (_EMPTY_HEIGHT, _EMPTY_WIDTH)
    stream.pix_fmt = pix_fmt
    if bit_rate:
      stream.bit_rate = bit_rate
    if keyframe_interval:
      stream.codec_context.gop_size = keyframe_interval
    if frame_times is not None:
      stream.codec_context.time_base = _VFR_TIME_BASE
    if display_rotation is not None:
      stream.set_display_rotation(*display_rotation)
    # Writes the header even when no frame follows (a zero-frame video).
    container.start_encoding()
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      if frame_times is not None:
        frame.pts, frame.time_base = round(frame_times[i] / _VFR_TIME_BASE), _VFR_TIME_BASE
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
    if audio is not None:
      _write_silence(container, audio, seconds=len(frames) / fps)
  return path


def _write_silence(container, stream, seconds):
  samples = stream.codec_context.frame_size or 1024
  for i in range(int(seconds * stream.rate / samples) + 1):
    frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
    frame.rate, frame.pts = stream.rate, i * samples
    container.mux(stream.encode(frame))
  container.mux(stream.encode())


def write_indexed_video(
  path,
  num_frames: int,
  width: int = 64,
  height: int = 48,
  fps: int = 30,
  codec: str = "libx264",
  keyframe_interval: int | None = None,
):
  """Writes a video whose frame i is flat grey at frame_level(i).

  With codec libx264 the stream has B-frames, so decode order differs from
  display order; keyframe_interval makes several keyframes (for seeking).
  num_frames=0 writes a container with a video stream but no frames.
  """
  if num_frames > MAX_INDEXED_FRAMES:
    raise ValueError(f"at most {MAX_INDEXED_FRAMES} indexed frames")
  frames = [np.full((height, width, 3), frame_level(i), np.uint8) for i in range(num_frames)]
  # High quality, so that flat grey levels survive the lossy coding.
  return _write(path, frames, fps, codec, keyframe_interval, bit_rate=4_000_000)


def textured_frames(num_frames: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
  """Moving smooth patterns with mild noise, like camera footage: every frame differs."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, 3)
  frames = []
  for t in range(num_frames):
    red = np.sin((x + 3 * t) / 23.0 + phase[0]) * np.cos((y - 2 * t) / 31.0)
    green = np.sin((0.7 * x - 0.4 * y + 5 * t) / 17.0 + phase[1])
    blue = np.cos(np.hypot(x - width / 2 - 60 * np.sin(t / 20.0), y - height / 2) / 11.0 + phase[2])
    image = 128 + 100 * np.stack([red, green, blue], axis=-1)
    image += rng.normal(0, 6, image.shape)
    frames.append(np.clip(image, 0, 255).astype(np.uint8))
  return frames


def write_textured_video(
  path, num_frames: int = 300, width: int = 340, height: int = 256, fps: int = 30, seed: int = 0
):
  """Writes textured_frames as H.264.

  At the default size this is a 10 s, 340x256, 30 fps H.264 mp4 of about
  0.5 MB, the shape of the Kinetics videos the official recipe reads.
  """
  return _write(path, textured_frames(num_frames, width, height, seed), fps, "libx264", None)


def write_video(
  path,
  num_frames: int = 60,
  width: int = 64,
  height: int = 48,
  codec: str = "libx264",
  pix_fmt: str = "yuv420p",
  options: dict[str, str] | None = None,
  bit_rate: int | None = None,
  keyframe_interval: int | None = None,
  frame_times: Sequence[float] | None = None,
  audio_first: bool = False,
  display_rotation: tuple[int, bool, bool] | None = None,
  seed: int = 0,
):
  """Writes textured frames with any encoder into the container its suffix names.

  Args:
    options: encoder options (AVOptions such as {"bf": "2"}).
    frame_times: presentation time of each frame in seconds (variable frame
      rate); by default 30 fps.
    audio_first: adds a silent audio stream before the video stream.
    display_rotation: (degrees counterclockwise, hflip, vflip) written as the
      display matrix, as phones record.
  """
  frames = textured_frames(num_frames, width, height, seed)
  return _write(
    path,
    frames,
    30,
    codec,
    keyframe_interval,
    bit_rate=bit_rate,
    pix_fmt=pix_fmt,
    options=options,
    frame_times=frame_times,
    audio_first=audio_first,
    display_rotation=display_rotation,
  )


def write_video_changing_size(
  path, sizes: Sequence[tuple[int, int]], codec: str, pix_fmt: str = "yuv420p", frames_per_size: int = 20
):
  """Writes one video stream whose frame size changes: (height, width) per part.

  Each part has an encoder of its own, so it starts with a keyframe that
  carries the new size; the container declares the first part's size.
  """
  path = pathlib.Path(path)
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(codec, rate=30)
    stream.height, stream.width = sizes[0]
    stream.pix_fmt = pix_fmt
    container.start_encoding()
    pts = 0
    for height, width in sizes:
      encoder = av.CodecContext.create(codec, "w")
      encoder.height, encoder.width, encoder.pix_fmt = height, width, pix_fmt
      # libvpx's worker threads spin while they wait: two test processes encoding at once crawled (a frame a second).
      encoder.thread_count = 1
      encoder.time_base = stream.codec_context.time_base
      for image in textured_frames(frames_per_size, width, height, seed=pts):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, encoder.time_base
        pts += 1
        _mux_into(container, stream, encoder.encode(frame))
      _mux_into(container, stream, encoder.encode(None))
  return path


def _mux_into(container, stream, packets):
  for packet in packets:
    packet.stream = stream
    container.mux(packet)


def remux(source, destination, drop_first_packets: int = 0, shift_frames: int = 0):
  """Copies a video stream into another file (container from the suffix).

  drop_first_packets cuts the stream without its first keyframe, as a cut
  that ignores keyframes does; shift_frames moves every timestamp that many
  frames earlier, so that an MP4 gets an edit list that hides the first
  frames (which later frames may still reference).
  """
  destination = pathlib.Path(destination)
  with av.open(str(source)) as reader, av.open(str(destination), mode="w") as writer:
    stream = reader.streams.video[0]
    copy = writer.add_stream_from_template(stream)
    shift = round(shift_frames / (stream.average_rate * stream.time_base))
    for packet in [p for p in reader.demux(stream) if p.size][drop_first_packets:]:
      packet.pts -= shift
      packet.dts -= shift
      _mux_into(writer, copy, [packet])
  return destination


def set_mp4_display_matrix(path, matrix: Sequence[int]):
  """Overwrites the display matrix in an MP4's track header by hand, as a phone writes it.

  matrix: the nine numbers of the tkhd box (a, b, u, c, d, v, x, y, w), with
  a-d, x and y in 16.16 fixed point and u, v, w in 2.30.
  """
  path = pathlib.Path(path)
  data = bytearray(path.read_bytes())
  box = data.find(b"tkhd")
  # Version 1 headers have 64-bit times and duration.
  matrix_offset = box + (56 if data[box + 4] == 1 else 44)
  data[matrix_offset : matrix_offset + 36] = struct.pack(">9i", *matrix)
  path.write_bytes(bytes(data))
  return path


def write_tar(tar_path, folder, relative_paths):
  """Writes an uncompressed tar of folder/relative_path under relative_path."""
  with tarfile.open(tar_path, "w") as tar:
    for relative_path in relative_paths:
      tar.add(os.path.join(folder, relative_path), arcname=relative_path)
  return pathlib.Path(tar_path)
