"""Reads videos from a folder or an uncompressed tar, and decodes chosen frames.

Decoder choice: PyAV (libavcodec). Measured on the 2-core dev machine with a
10 s, 340x256, 30 fps H.264 mp4: demuxing plus decoding all 300 frames takes
0.10-0.12 s in one thread, and two Python threads decoding two videos reach
17 videos/s because libav releases the GIL while decoding (a process pool
reached 15 videos/s, paying for pickling the frames). decord, which the
official code uses, has had no release since 2021 (0.6.0, wheels for Linux
x86_64 only) and decodes with the same libavcodec. So we decode with PyAV in
tf.data worker threads and keep the per-video Python work small.

Frame i of a video is the i-th frame that a full decode of its first video
stream yields, and count_frames says how many there are. Two paths get there.

The fast path serves H.264, HEVC, MPEG-4 Part 2 and MJPEG in MP4/MOV and
Matroska/WebM: their decoders turn each packet into one frame that carries
the packet's presentation timestamp, so

* the packets are demuxed once; their timestamps give the exact frame count
  and the index of every frame, so no second pass is needed;
* decoding starts at the last keyframe at or before the first wanted frame
  and stops as soon as the last wanted frame came out;
* frames that are neither wanted nor referenced by other frames are skipped
  by the decoder (skip_frame=NONREF per packet).

The exact path serves everything else: VP8, VP9 and AV1, whose packets may
carry hidden frames that are shown later (and dav1d reads skip_frame once,
when it opens, so NONREF at the first packet dropped every unreferenced frame
of an AV1 video, wanted or not); AVI,
whose timestamps follow decode order, so frames behind B-frames would be
misplaced; and fast-path streams that break its assumptions (a missing or
repeated timestamp, a first packet that is no keyframe, packets the container
discards, a decoder that returns a frame the packet index does not expect).
It feeds every packet to the decoder, without skipping, and takes frame i as
the i-th to come out. The wanted frames are chosen from the packet count and
the count is checked against the frames decoded; where they differ, the
frames are chosen again from the decoded count and decoded in a second pass.

On both paths only the wanted frames are converted to RGB (converting a frame
costs about as much as decoding it), at the first frame's size where the size
changes within the stream, and turned and mirrored as players show them where
the file's display matrix rotates by quarter turns (phone videos filmed
upright) or mirrors.
"""

import collections
from collections.abc import Callable, Sequence
import io
import os
import tarfile
import threading

import av
from av.video import reformatter
from etils import epath
import numpy as np


class VideoDecodeError(Exception):
  """A video is missing, unreadable, truncated or has no frames."""


def _reason(error: Exception) -> str:
  """An error's reason without the number and file name FFmpeg's and the OS's add (`Invalid data found when
  processing input`, not `[Errno 1094995529] Invalid data found when processing input: '<none>'`)."""
  return getattr(error, "strerror", None) or str(error)


class VideoSource:
  """Gives the bytes of videos under a root folder or inside an uncompressed tar.

  Paths are the ones in the annotation file, relative to the root. A tar may
  hold them under the same relative paths or, as the official code expects,
  under their base names only; both are found. The root may be on cloud
  storage (gs://...): files are read through etils.epath.
  """

  def __init__(self, root: str | os.PathLike[str]):
    self.root = epath.Path(root)
    # Member paths -> (offset, size), and base names -> the member paths of that name.
    self._tar_members, self._tar_base_names = (None, None) if check_root(root) == "folder" else _index_tar(self.root)

  def read_bytes(self, relative_path: str) -> bytes:
    """Returns the file's bytes; raises VideoDecodeError if it is missing (its message, for a warning that names the
    path already, names the root)."""
    if self._tar_members is None:
      path = self.root / relative_path
      try:
        return path.read_bytes()
      except FileNotFoundError as e:
        raise VideoDecodeError(f"not found in {self.root}") from e
      except Exception as e:  # OSError locally; cloud storage raises its own error types
        raise VideoDecodeError(f"{path}: cannot be read ({_reason(e)})") from e
    key = os.path.normpath(relative_path)
    location = self._tar_members.get(key)
    if location is None:
      # As officially, by base name, where the two paths differ only in folders one of them lacks at its start:
      # `a/x.mp4` is `x.mp4` in a flat tar and `videos/a/x.mp4` in one of a top folder, never `b/x.mp4`.
      agreeing = [m for m in self._tar_base_names.get(os.path.basename(key), ()) if _one_ends_the_other(m, key)]
      if len(agreeing) == 1:  # two would leave it unknown which is meant
        location = self._tar_members[agreeing[0]]
    if location is None:
      raise VideoDecodeError(f"not found in {self.root}")
    offset, size = location
    # A file object of its own per read, so that worker threads never share a file position.
    with self.root.open("rb") as f:
      f.seek(offset)
      data = f.read(size)
    if len(data) != size:
      raise VideoDecodeError(f"{relative_path}: {self.root} ends inside this member")
    return data


def check_root(root: str | os.PathLike[str]) -> str:
  """'folder' or 'tar', what the root of the videos is; ValueError if it is neither."""
  path = epath.Path(root)
  if path.is_dir():
    return "folder"
  if path.name.lower().endswith(".tar") and path.exists():  # VIDEOS.TAR too
    return "tar"
  raise ValueError(f"video root {os.fspath(path)!r} is neither a folder nor a .tar file")


def _one_ends_the_other(path: str, other: str) -> bool:
  """Whether the folders and name of one path are the last ones of the other."""
  parts, other_parts = path.split(os.sep), other.split(os.sep)
  shorter = min(len(parts), len(other_parts))
  return parts[-shorter:] == other_parts[-shorter:]


def _index_tar(tar_path: epath.Path) -> tuple[dict[str, tuple[int, int]], dict[str, list[str]]]:
  """Maps member paths to (offset, size), a link's to its file's; and base names to the member paths of that name."""
  try:
    with tar_path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      members = tar.getmembers()
  except tarfile.TarError as e:
    raise ValueError(f"{tar_path}: not an uncompressed tar archive ({e})") from e
  by_path = {os.path.normpath(m.name): (m.offset_data, m.size) for m in members if m.isfile()}
  # tar stores a file's second name as a hard link (named from the archive's top), and a symbolic link as it is.
  link_targets = {
    os.path.normpath(m.name): os.path.normpath(
      m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name), m.linkname)
    )
    for m in members
    if m.islnk() or m.issym()
  }
  for name, target in link_targets.items():
    for _ in link_targets:  # a chain of links, never a cycle
      if target not in link_targets:
        break
      target = link_targets[target]
    if target in by_path:
      by_path[name] = by_path[target]
  by_base_name = collections.defaultdict(list)
  for path in by_path:
    by_base_name[os.path.basename(path)].append(path)
  return by_path, dict(by_base_name)


# Decoders that turn each packet into exactly one frame stamped with the
# packet's timestamp, and whose skip_frame=NONREF drops no frame shown later.
_PACKET_INDEXED_CODECS = frozenset({"h264", "hevc", "mpeg4", "mjpeg"})
# Containers whose packet timestamps are presentation times (AVI's are not).
_PRESENTATION_TIMED_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})
# How much earlier than their listed DURATION a Matroska file's frames may end and be whole (besides two frames, for a
# last frame without a duration): timestamps rounded to milliseconds, muxers that count the end differently. A cut
# that loses less changes little of what is sampled.
_TRUNCATION_MARGIN_S = 0.5


def first_video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
  """The container's first video stream that moves: a picture attached to an audio file or a video (an album
  cover, a thumbnail) is a video stream of one frame, but not the video."""
  moving = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
  return moving[0] if moving else None


def _matroska_duration_seconds(stream: av.VideoStream) -> float | None:
  """The stream's DURATION tag ('00:00:04.000000000', FFmpeg's Matroska muxer), in seconds; None without one."""
  hours, _, rest = stream.metadata.get("DURATION", "").partition(":")
  minutes, _, seconds = rest.partition(":")
  try:
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
  except ValueError:
    return None


class _Video:
  """The first video stream of a file (not a cover picture): its packets and both ways to decode them."""

  def __init__(self, video_bytes: bytes):
    try:
      self._container = av.open(io.BytesIO(video_bytes), mode="r")
    except (av.FFmpegError, ValueError) as e:
      raise VideoDecodeError(f"not a readable video ({_reason(e)})") from e
    self._stream = first_video_stream(self._container)
    if self._stream is None:
      cover = bool(self._container.streams.video)
      self._container.close()
      raise VideoDecodeError("the file has no video stream" + (", only a cover picture" if cover else ""))
    if self._stream.codec_context is None:
      self._container.close()
      raise VideoDecodeError("no decoder for the video stream's codec")
    # One thread per video: the pipeline already decodes one video per core.
    self._stream.thread_type = "NONE"
    try:
      # Packets the container discards (edit lists) still go to the decoder:
      # later frames may reference theirs, which the decoder then drops.
      self._packets = [p for p in self._container.demux(self._stream) if p.size]
    except av.FFmpegError as e:
      self._container.close()
      raise VideoDecodeError(f"demuxing failed ({_reason(e)})") from e
    # FFmpeg reads a picture (a .jpg or .png renamed .mp4) as a one-frame video of a `*_pipe` format (a stream of
    # pictures): it would be classified, and counted as a video, as the same frame repeated.
    image_format = self._container.format.name.removesuffix("_pipe")
    if image_format != self._container.format.name and len(self._packets) == 1:
      self._container.close()
      raise VideoDecodeError(f"a still picture ({image_format}), not a video")
    # An mp4 or mov lists every frame in its index, which a download cut short still holds in full (at its start):
    # fewer frames in the file than listed is a truncated file, not a shorter video.
    listed = self._stream.frames
    if self._container.format.name.startswith("mov,") and len(self._packets) < listed:
      self._container.close()
      raise VideoDecodeError(f"truncated: {len(self._packets)} of the {listed} frames its index lists are in the file")
    # FFmpeg's Matroska/WebM muxer writes each stream's DURATION at the file's start (yt-dlp's merges, ffmpeg's
    # cuts): frames ending well before it are a truncated file, not a shorter video.
    listed_end = (
      _matroska_duration_seconds(self._stream) if self._container.format.name.startswith("matroska") else None
    )
    frames_end = self._end_seconds() if listed_end is not None else None
    if frames_end is not None:
      frame_time = frames_end / max(len(self._packets), 1)
      if frames_end < listed_end - max(_TRUNCATION_MARGIN_S, 2 * frame_time):
        self._container.close()
        raise VideoDecodeError(
          f"truncated: its frames end at {frames_end:.2f} s of the {listed_end:.2f} s its header lists"
        )
    self.num_packets = sum(not p.is_discard for p in self._packets)
    self._index_of_pts = self._packet_index()
    codec = self._stream.codec_context
    # The size the container declares, which is its first frame's.
    self._frame_size = (codec.height, codec.width) if codec.height and codec.width else None
    # How players turn and mirror the stored picture, read from the first frame converted.
    self._orientation = None

  def _end_seconds(self) -> float | None:
    """When the last frame in the file ends, by packet timestamps; None without them."""
    ends = [p.pts + (p.duration or 0) for p in self._packets if p.pts is not None]
    return float(max(ends) * self._stream.time_base) if ends and self._stream.time_base else None

  @property
  def is_packet_indexed(self) -> bool:
    """Whether the fast path applies: packet timestamps index the frames."""
    return self._index_of_pts is not None

  def close(self):
    self._container.close()

  def _packet_index(self) -> dict[int, int] | None:
    """Presentation index of each packet timestamp, where the fast path is exact."""
    packets = self._packets
    if (
      self._stream.codec_context.name not in _PACKET_INDEXED_CODECS
      or not _PRESENTATION_TIMED_FORMATS & set(self._container.format.name.split(","))
      or not packets
      or self.num_packets != len(packets)
      or not packets[0].is_keyframe
      or any(p.pts is None for p in packets)
    ):
      return None
    timestamps = sorted(p.pts for p in packets)
    index_of_pts = {pts: i for i, pts in enumerate(timestamps)}
    # Frames shown before the first keyframe are leading frames of an open
    # GOP, which the decoder drops when the stream starts there.
    if timestamps[0] != packets[0].pts or len(index_of_pts) != len(packets):
      return None
    return index_of_pts

  def decode_from_keyframe(self, wanted: set[int]) -> dict[int, np.ndarray] | None:
    """The fast path: the wanted frames, or None where the decoder disagrees with the index."""
    first_wanted = min(wanted)
    # Decoding can start at the last keyframe shown no later than the first
    # wanted frame: later frames never reference frames before a keyframe.
    keyframe_positions = [
      position
      for position, p in enumerate(self._packets)
      if p.is_keyframe and self._index_of_pts[p.pts] <= first_wanted
    ]
    start = keyframe_positions[-1] if keyframe_positions else 0
    codec = self._stream.codec_context
    remaining = set(wanted)
    frames = {}
    last_index = -1
    try:
      for packet in self._packets[start:] + [None]:
        if packet is not None:
          # Frames that no other frame references and that we do not want
          # need not be decoded at all (exact; about 8% faster on H.264).
          codec.skip_frame = "DEFAULT" if self._index_of_pts[packet.pts] in remaining else "NONREF"
        for frame in codec.decode(packet):
          index = self._index_of_pts.get(frame.pts)
          # Each frame comes out once, in presentation order, at a packet's timestamp.
          if index is None or index <= last_index:
            return None
          last_index = index
          if index in remaining:
            frames[index] = self._to_rgb(frame)
            remaining.discard(index)
        if not remaining:
          return frames
    except av.FFmpegError:
      return None
    return None

  def decode_every_frame(self, wanted: set[int], stop_once_wanted_are_out: bool) -> tuple[dict[int, np.ndarray], int]:
    """The exact path: the wanted frames by output position, and the number of frames that came out."""
    codec = self._stream.codec_context
    # Forgets a fast-path attempt.
    codec.flush_buffers()
    codec.skip_frame = "DEFAULT"
    frames = {}
    num_frames = 0
    try:
      for packet in self._packets + [None]:
        for frame in codec.decode(packet):
          if not num_frames:
            self._frame_size = (frame.height, frame.width)
          if num_frames in wanted:
            frames[num_frames] = self._to_rgb(frame)
          num_frames += 1
        if stop_once_wanted_are_out and len(frames) == len(wanted):
          break
    except av.FFmpegError as e:
      raise VideoDecodeError(f"decoding failed ({_reason(e)})") from e
    return frames, num_frames

  def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
    """The frame in RGB, at the first frame's size, as players show it."""
    if self._frame_size is None:
      self._frame_size = (frame.height, frame.width)
    if self._orientation is None:
      self._orientation = _orientation(frame)
    height, width = self._frame_size
    image = _thread_reformatter().reformat(frame, format="rgb24", width=width, height=height, threads=1).to_ndarray()
    return _orient(image, self._orientation)


_per_thread = threading.local()


def _thread_reformatter() -> reformatter.VideoReformatter:
  """This thread's frame converter. frame.to_ndarray(format=...) sets up a new converter with a thread per core for
  every frame, which costs more than converting a small frame; a kept one is set up again only when the size or
  format changes. Same pixels."""
  if not hasattr(_per_thread, "reformatter"):
    _per_thread.reformatter = reformatter.VideoReformatter()
  return _per_thread.reformatter


def _orientation(frame: av.VideoFrame) -> tuple[bool, bool, bool]:
  """(transpose, flip rows, flip columns): how players show the stored picture, from the frame's display matrix.

  A stored pixel (x, y) is shown at (a x + c y, b x + d y), plus a shift (ISO/IEC 14496-12's tkhd matrix, which
  FFmpeg's display matrix copies). Phones write quarter turns; mirrors occur too. A matrix that is neither (another
  angle, a shear) is left as stored. Read once per video: frame.side_data's reference cycle keeps its frame alive until
  the garbage collector runs, which cost 15-20% of the throughput of two decoding threads when read for every frame.
  """
  matrix = next((bytes(data) for data in frame.side_data if data.type.name == "DISPLAYMATRIX"), None)
  if matrix is None or len(matrix) != 36:
    return (False, False, False)
  a, b, _, c, d = np.frombuffer(matrix, dtype=np.int32)[:5].astype(np.float64)
  scale = max(abs(a), abs(b), abs(c), abs(d))
  # Within a degree of a quarter turn, as a rotation rounds.
  small = scale * np.sin(np.radians(1))
  if scale and abs(b) <= small and abs(c) <= small:
    return (False, d < 0, a < 0)
  if scale and abs(a) <= small and abs(d) <= small:
    # Shown row b x comes from stored column x, shown column c y from stored row y.
    return (True, b < 0, c < 0)
  return (False, False, False)


def _orient(image: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
  """An (H, W, 3) image transposed and flipped as _orientation says."""
  transpose, flip_rows, flip_columns = orientation
  if transpose:
    image = image.transpose(1, 0, 2)
  return image[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]


def count_frames(video_bytes: bytes) -> int:
  """Returns the number of frames a full decode yields (those decode_frames can address)."""
  video = _Video(video_bytes)
  try:
    num_frames = (
      video.num_packets
      if video.is_packet_indexed
      else video.decode_every_frame(set(), stop_once_wanted_are_out=False)[1]
    )
  finally:
    video.close()
  if not num_frames:
    raise VideoDecodeError("the video has no frames")
  return num_frames


def _chosen_indices(choose_indices: Callable[[int], Sequence[int]], num_frames: int) -> np.ndarray:
  indices = np.asarray(choose_indices(num_frames), dtype=np.int64)
  if indices.ndim != 1 or not indices.size:
    raise ValueError(f"expected a non-empty list of frame indices, got shape {indices.shape}")
  if indices.min() < 0 or indices.max() >= num_frames:
    raise ValueError(f"frame indices {indices.tolist()} fall outside a video of {num_frames} frames")
  return indices


def decode_sampled_frames(
  video_bytes: bytes,
  choose_indices: Callable[[int], Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes the frames that choose_indices(num_frames) picks.

  Frame i is the i-th frame of a full decode, converted to RGB, resized
  (bilinear, swscale's default) to the first frame's size and turned upright
  (see the module doc).

  Args:
    video_bytes: the encoded video file.
    choose_indices: gets the frame count, returns frame indices in
      [0, num_frames), in the order wanted; repeats are allowed. It is called
      a second time, with the decoded count, in the rare case that the
      container's packet count is not the number of frames.

  Returns:
    (frames, indices): uint8 RGB frames of shape (len(indices), H, W, 3), in
    the order of the int64 indices.

  Raises:
    VideoDecodeError: the video cannot be read or decoded, or has no frames.
    ValueError: choose_indices returned an index outside the video.
  """
  video = _Video(video_bytes)
  try:
    num_frames = video.num_packets
    indices = _chosen_indices(choose_indices, num_frames) if num_frames else np.zeros([0], np.int64)
    by_index = None
    if video.is_packet_indexed:
      by_index = video.decode_from_keyframe(set(indices.tolist()))
    if by_index is None:
      by_index, num_decoded = video.decode_every_frame(set(indices.tolist()), stop_once_wanted_are_out=False)
      if not num_decoded:
        raise VideoDecodeError("the video has no frames")
      if num_decoded != num_frames:
        indices = _chosen_indices(choose_indices, num_decoded)
        by_index, _ = video.decode_every_frame(set(indices.tolist()), stop_once_wanted_are_out=True)
  finally:
    video.close()
  shapes = {frame.shape for frame in by_index.values()}
  if len(shapes) != 1:
    raise VideoDecodeError(f"the display orientation changes within the video: {shapes}")
  return np.stack([by_index[i] for i in indices.tolist()]), indices


def decode_frames(video_bytes: bytes, indices: Sequence[int]) -> np.ndarray:
  """Decodes frames by index: uint8 RGB (len(indices), H, W, 3), in order."""
  frames, _ = decode_sampled_frames(video_bytes, lambda num_frames: indices)
  return frames
