"""`python -m xclip_jax.classify`: a user's videos scored against class names."""

import functools
import json
import pathlib
import re
import subprocess
import sys
import tracemalloc

from absl import flags
import numpy as np
import pytest

from input_pipeline import augment
from input_pipeline import demo_data
from input_pipeline import sampling
from input_pipeline import video_dataset
from input_pipeline import video_decode
from tests.fixtures import forked_commands
from tests.fixtures import tiny
from tests.fixtures import video_fixtures
import xclip_jax
from xclip_jax import classify
from xclip_jax import pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def golden_model(golden_dir):
  return xclip_jax.load_pretrained(golden_dir / "xclip_official.pth")


def test_classify_ranks_all_classes_by_probability(golden_model, golden_dir, tmp_path):
  class_names = json.loads((golden_dir / "meta.json").read_text())["class_names"]
  video = video_fixtures.write_indexed_video(tmp_path / "clip.mp4", num_frames=20)
  (result,) = classify.classify(golden_model, [video], class_names, top_k=len(class_names))
  assert result.video == str(video) and result.error is None
  names = [name for name, _ in result.top]
  probabilities = np.array([p for _, p in result.top])
  assert sorted(names) == sorted(class_names)
  assert np.all(np.diff(probabilities) <= 0)
  np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)
  # The same clip through the API gives the same ranking.
  clip = classify.load_views(video, golden_model.config.num_frames, golden_model.config.image_resolution)
  assert clip.shape == (1, 4, 32, 32, 3)
  logits = np.asarray(golden_model.logits(clip, xclip_jax.tokenize(class_names)))[0]
  assert names[0] == class_names[int(np.argmax(logits))]


@pytest.mark.parametrize("num_crops", [1, 3])
@pytest.mark.parametrize(
  "height, width, input_size",
  [(256, 340, 224), (240, 320, 224), (360, 480, 224), (480, 270, 224), (256, 292, 224), (48, 64, 32), (20, 30, 32)],
)
def test_eval_crops_are_augment_eval_augment_bit_for_bit(height, width, input_size, num_crops):
  rng = np.random.default_rng(height * width)
  frames = rng.integers(0, 256, (2, height, width, 3), np.uint8)
  # Smooth ramps too: their bilinear values often fall on .5, where rounding must match exactly.
  frames[1] = (np.add.outer(np.arange(height), 3 * np.arange(width)) % 256)[:, :, None]
  expected = augment.eval_augment(frames, input_size, num_crops=num_crops).numpy()
  np.testing.assert_array_equal(classify.eval_crops(frames, input_size, num_crops), expected)


@pytest.mark.parametrize("num_crops", [1, 3])
def test_eval_crops_of_large_frames_never_hold_the_frames_as_floats(num_crops):
  # 1080p: float32 copies of the frames would take four times their 12 MB; the crops themselves take 4 MB.
  frames = np.zeros((2, 1080, 1920, 3), np.uint8)
  tracemalloc.start()
  try:
    classify.eval_crops(frames, 224, num_crops)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < frames.nbytes


def test_eval_crops_normalise_with_the_official_mean_and_std():
  frames = np.full((1, 32, 32, 3), 128, np.uint8)
  # X-CLIP's mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375), ImageNet's: (128 - mean) / std.
  np.testing.assert_allclose(classify.eval_crops(frames, 32)[0, 0, 0, 0], [0.0740646, 0.2051821, 0.4264924], rtol=1e-5)


def test_classify_imports_no_tensorflow():
  """Why classify keeps its own numpy copy of the evaluation crops and normalisation: importing TensorFlow takes
  seconds."""
  check = "import sys; import xclip_jax.classify; print('tensorflow' in sys.modules)"
  result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"


def test_views_are_the_evaluation_pipelines_views(tmp_path):
  video = video_fixtures.write_video(tmp_path / "clip.mp4", num_frames=30, width=64, height=48)
  frames, _ = video_decode.decode_sampled_frames(
    video.read_bytes(), lambda total: sampling.eval_clips_frame_indices(total, 4, 4)
  )
  expected = video_dataset.eval_views(frames, num_frames=4, input_size=32, num_clips=4, num_crops=3).numpy()
  np.testing.assert_array_equal(classify.load_views(video, 4, 32, num_clips=4, num_crops=3), expected)


def test_batches_give_the_results_of_single_videos_and_unreadable_ones_are_reported(tmp_path):
  model = tiny.model()
  videos = [video_fixtures.write_indexed_video(tmp_path / f"{i}.mp4", num_frames=10 + 7 * i) for i in range(4)]
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  videos[1:1] = [tmp_path / "broken.mp4", tmp_path / "missing.mp4"]
  names = ["a", "b", "c"]
  batched = list(classify.classify(model, videos, names, top_k=3, batch_size=3))
  single = list(classify.classify(model, videos, names, top_k=3, batch_size=1))
  assert [result.video for result in batched] == [str(video) for video in videos]
  assert isinstance(batched[1].error, video_decode.VideoDecodeError)
  assert isinstance(batched[2].error, FileNotFoundError)
  for one, many in zip(single, batched):
    assert [name for name, _ in one.top] == [name for name, _ in many.top]
    np.testing.assert_allclose([p for _, p in one.top], [p for _, p in many.top], rtol=1e-5)
    assert (one.error is None) == (many.error is None) == bool(many.top)


def test_a_video_too_large_for_memory_is_reported_and_the_others_are_classified(scored, tmp_path, monkeypatch):
  model, results = scored
  huge = tmp_path / "huge.mp4"
  huge.write_bytes(b"\0" * 3_000_000)
  read_bytes = classify.pathlib.Path.read_bytes

  def out_of_memory_on_huge(path):
    if path.name == "huge.mp4":
      raise MemoryError()
    return read_bytes(path)

  monkeypatch.setattr(classify.pathlib.Path, "read_bytes", out_of_memory_on_huge)
  videos = [results[0].video, huge, results[1].video]
  first, too_large, last = classify.classify(model, videos, CLASSES.split(","))
  assert str(too_large.error) == "not enough memory to read it (3 MB)" and too_large.top == []
  assert first.top == results[0].top and last.top == results[1].top


def test_probabilities_of_logits_beyond_float32_exp_are_finite():
  # logit_scale 100 x a cosine of 0.95: exp(95) overflows float32.
  probabilities = classify._softmax(np.array([[95.0, 85.0, 0.0]], np.float32))
  expected = [1 / (1 + np.exp(-10.0)), np.exp(-10.0) / (1 + np.exp(-10.0)), 0.0]
  np.testing.assert_allclose(probabilities, [expected], rtol=1e-6, atol=1e-30)


def test_twelve_views_average_the_softmax_of_each_view(tmp_path):
  # Views that disagree: each quarter of the clip and each third of its width has its own colour, so every view sees
  # other colours, and the logit scale is 100 (CLIP's trained value), so the views' logits differ by several units.
  # Then the mean of the views' softmaxes and the softmax of their mean logits are far apart (checked below).
  model = tiny.model()
  model = pretrained.XCLIPModel(model.config, {**model.params, "logit_scale": np.log(np.float32(100.0))})
  colours = np.random.default_rng(0).integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
  frames = np.repeat(np.repeat(colours, 8, axis=0)[:, None], 64, axis=1).repeat(32, axis=2)  # (32, 64, 96, 3)
  video = demo_data.write_video(tmp_path / "v.mp4", frames)
  names = ["a", "b", "c", "d", "e"]
  (result,) = classify.classify(model, [video], names, top_k=0, views=12)
  views = classify.load_views(video, model.config.num_frames, model.config.image_resolution, num_clips=4, num_crops=3)
  logits = np.asarray(model.logits(views, xclip_jax.tokenize(names)), np.float64)
  softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
  expected = softmax(logits).mean(axis=0)
  assert not np.allclose(softmax(logits.mean(axis=0)), expected, rtol=0.1)  # the two averages are distinguishable
  np.testing.assert_allclose([dict(result.top)[name] for name in names], expected, rtol=1e-4)


CLASSES = "a shape sliding,a shape spinning,a shape standing still"


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
  """A tiny checkpoint, two videos and each kind of video that cannot be read."""
  root = tmp_path_factory.mktemp("cli")
  checkpoint = tiny.model().save(root / "tiny")
  good = [demo_data.write_video(root / f"good{i}.mp4", demo_data.render(i, np.random.default_rng(i))) for i in range(2)]
  (root / "unreadable.mp4").write_bytes(b"not a video")
  data = good[0].read_bytes()
  (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
  empty = video_fixtures.write_indexed_video(root / "no_frames.mp4", num_frames=0)
  bad = [root / "missing.mp4", root / "unreadable.mp4", root / "truncated.mp4", empty]
  return root, checkpoint, good, bad


def run_classify(*args):
  """The command, in a process of its own: what it shows from its start to its end."""
  command = [sys.executable, "-m", "xclip_jax.classify", *map(str, args)]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def classify_command():
  """The command run for its mistakes: each run a child forked from one process that imported its dependencies
  (tests/fixtures/forked_commands.py), seconds of start-up saved a run; run_classify's tests see the start-up."""
  with forked_commands.command("xclip_jax.classify", REPO) as run:
    yield run


@pytest.fixture(scope="module")
def cli_run(cli_inputs, tmp_path_factory):
  """One run of the command with --json and --embed on two good videos around every kind of unreadable one."""
  root, checkpoint, good, bad = cli_inputs
  videos = [good[0], *bad, good[1]]
  out = tmp_path_factory.mktemp("embed") / "embeddings.npz"
  result = run_classify(
    f"--checkpoint={checkpoint}", f"--classes={CLASSES}", "--views=3", "--top_k=0", "--json", f"--embed={out}", *videos
  )
  return result, videos, out


def test_a_clip_checkpoint_classifies_with_a_warning_that_its_xclip_modules_are_untrained(cli_inputs, tmp_path):
  _, _, good, _ = cli_inputs
  clip = tiny.save_clip_checkpoint(tmp_path / "clip.pt")
  result = run_classify(f"--checkpoint={clip}", f"--classes={CLASSES}", "--json", good[0])
  assert result.returncode == 0, result.stderr
  assert len(json.loads(result.stdout)["videos"]) == 1
  assert result.stderr.splitlines() == [
    f"warning: {clip} is a CLIP model: X-CLIP's message tokens, MIT and prompt generator are untrained, so these are "
    "not a trained X-CLIP's results; use an X-CLIP checkpoint, or one trained from this one"
  ]


def test_command_reports_json_and_every_unreadable_video(cli_inputs, cli_run):
  _, _, good, bad = cli_inputs
  result, videos, _ = cli_run
  assert result.returncode == 2
  document = json.loads(result.stdout)
  assert document["views"] == 3 and [v["path"] for v in document["videos"]] == [str(v) for v in videos]
  names = CLASSES.split(",")
  for entry in (document["videos"][0], document["videos"][-1]):
    labels = [p["label"] for p in entry["predictions"]]
    probabilities = [p["probability"] for p in entry["predictions"]]
    assert sorted(labels) == sorted(names) and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
  for entry in document["videos"][1:-1]:
    assert set(entry) == {"path", "error"} and entry["error"]
  # One line per unreadable video, naming it, then the count; no traceback, no start-up logs.
  lines = result.stderr.strip().splitlines()
  assert [line.split(": cannot classify: ")[0] for line in lines[:-1]] == [str(v) for v in bad]
  assert lines[-1].startswith(f"error: {len(bad)} of {len(videos)} videos could not be classified")


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embeddings_are_the_plain_class_texts_and_the_view_averaged_videos(cli_inputs, cli_run):
  """--embed: text rows are the normalised `encode_text` of the class names, in order; video rows, for the videos
  that could be read, in order, are the mean of the normalised `encode_video` of their views, normalised."""
  _, checkpoint, good, _ = cli_inputs
  embeddings = np.load(cli_run[2])
  names = CLASSES.split(",")
  assert list(embeddings["labels"]) == names and list(embeddings["videos"]) == [str(good[0]), str(good[1])]
  model = xclip_jax.load_pretrained(checkpoint)
  text = _unit(np.asarray(model.encode_text(xclip_jax.tokenize(names))))
  # The command runs the same programs on the same inputs: the same bits here; 1e-6 leaves room for other backends.
  np.testing.assert_allclose(embeddings["text_embeddings"], text, rtol=0, atol=1e-6)
  size, frames = model.config.image_resolution, model.config.num_frames
  views = [classify.load_views(video, frames, size, num_clips=1, num_crops=3) for video in good]
  video = np.stack([_unit(_unit(np.asarray(model.encode_video(v)[0])).mean(axis=0)) for v in views])
  # Averaging the views before normalising them would move 60 of the 64 entries by more than 1e-6 (at most 1.2e-4).
  np.testing.assert_allclose(embeddings["video_embeddings"], video, rtol=0, atol=1e-6)
  assert embeddings["text_embeddings"].dtype == embeddings["video_embeddings"].dtype == np.float32


@pytest.mark.parametrize(
  "labels, checkpoint, message",
  [
    ("--classes=", None, "error: --classes lists no classes"),
    ("--classes=a shape,b,a shape", None, "error: --classes lists 'a shape' more than once"),
    ("--classes=Surfing,surfing", None, "error: --classes lists 'Surfing' and 'surfing', which the model reads as"),
    ("duplicated.csv", None, "duplicated.csv:4: class 'b' (id 2) reads as class 'b' (id 1, line 3)"),
    ("header_only.csv", None, "the label list has no classes"),
    (f"--classes={CLASSES}", "missing", "error: --checkpoint=MISSING: no checkpoint at MISSING"),
    (  # the path said once
      f"--classes={CLASSES}",
      "not_a_checkpoint.txt",
      "error: --checkpoint=OTHER: neither a torch zip archive nor a legacy torch.save file",
    ),
  ],
)
def test_bad_labels_and_checkpoints_are_one_line_errors(
  classify_command, cli_inputs, tmp_path, labels, checkpoint, message
):
  root, tiny, good, _ = cli_inputs
  if labels.endswith(".csv"):
    (tmp_path / "duplicated.csv").write_text("id,name\n0,a\n1,b\n2,b\n")
    (tmp_path / "header_only.csv").write_text("id,name\n")
    labels = f"--labels={tmp_path / labels}"
  if checkpoint == "missing":
    tiny = tmp_path / "missing"
    message = message.replace("MISSING", str(tiny))
  elif checkpoint:
    tiny = tmp_path / checkpoint
    tiny.write_text("a text file, not a checkpoint\n")
    message = message.replace("OTHER", str(tiny))
  result = classify_command(f"--checkpoint={tiny}", labels, good[0])
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--num_frames=0", "error: --num_frames=0: 0 is not a positive integer"),
    ("--num_frames=-3", "error: --num_frames=-3: -3 is not a positive integer"),
    ("--batch_size=0", "error: --batch_size=0: 0 is not a positive integer"),
    ("--batch_size=-2", "error: --batch_size=-2: -2 is not a positive integer"),
  ],
)
def test_flags_out_of_range_are_one_line_errors(classify_command, cli_inputs, flag, message):
  _, checkpoint, good, _ = cli_inputs
  result = classify_command(f"--checkpoint={checkpoint}", f"--classes={CLASSES}", flag, good[0])
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == message + "\n", result.stderr


@pytest.mark.parametrize(
  "arguments, message",
  [
    (("--checkpoint=CKPT", "--labels=LABELS", "--classes=a,b", "VIDEO"), "pass exactly one of --labels and --classes"),
    (("--checkpoint=CKPT", "VIDEO"), "pass exactly one of --labels and --classes"),
    (("--checkpoint=CKPT", "--classes=a,b"), "name at least one video file"),
    (("--classes=a,b", "VIDEO"), "--checkpoint=None: Flag --checkpoint must have a value other than None."),
  ],
)
def test_usage_mistakes_are_one_line_errors(classify_command, cli_inputs, tmp_path, arguments, message):
  _, checkpoint, good, _ = cli_inputs
  labels = tmp_path / "labels.csv"
  labels.write_text("id,name\n0,a\n1,b\n")
  names = {"CKPT": checkpoint, "LABELS": labels, "VIDEO": good[0]}
  for name, path in names.items():
    arguments = [argument.replace(name, str(path)) for argument in arguments]
  result = classify_command(*arguments)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == f"error: {message}\n", result.stderr


def test_a_closed_stdout_ends_the_command_quietly_with_the_status_of_sigpipe():
  """`classify ... | head -2`: no BrokenPipeError traceback once the reader has gone."""
  # The command's printing, without a model: many lines, flushed one by one, as each video's are.
  script = (
    "import sys\n"
    "from xclip_jax import classify\n"
    "def _run(videos):\n"
    "  for i in range(100_000):\n"
    "    print(f'video {i}', flush=True)\n"
    "  return 0\n"
    "classify._run = _run\n"
    "sys.argv = ['classify', '--checkpoint=unused', '--compilation_cache_dir=none']\n"
    "classify.run()\n"
  )
  process = subprocess.Popen(
    [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  assert process.stdout.readline() == "video 0\n"
  process.stdout.close()
  stderr = process.stderr.read()
  assert process.wait(timeout=60) == classify.EXIT_BROKEN_PIPE == 141
  assert stderr == ""


def test_no_embeddings_file_is_written_when_no_video_could_be_read(classify_command, cli_inputs, tmp_path):
  """A file of an earlier run at --embed is kept, not replaced by one without videos."""
  _, checkpoint, _, bad = cli_inputs
  out = tmp_path / "embeddings.npz"
  np.savez(out, videos=np.array(["an earlier run's video"]))
  earlier = out.read_bytes()
  result = classify_command(f"--checkpoint={checkpoint}", f"--classes={CLASSES}", f"--embed={out}", bad[1])
  assert result.returncode == 2
  assert (
    result.stderr.splitlines()[-1]
    == f"error: 1 of 1 videos could not be classified: {bad[1]}; --embed={out} not written"
  )
  assert out.read_bytes() == earlier


@pytest.mark.parametrize(
  "embed, message",
  [
    ("no_folder/x.npz", "error: --embed=DIR/no_folder/x.npz: no directory DIR/no_folder"),
    ("folder", "error: --embed=DIR/folder is a directory; name the .npz file to write"),
  ],
)
def test_an_embed_file_that_cannot_be_written_is_refused_before_any_video_is_classified(
  classify_command, cli_inputs, tmp_path, embed, message
):
  _, checkpoint, good, _ = cli_inputs
  (tmp_path / "folder").mkdir()
  result = classify_command(
    f"--checkpoint={checkpoint}", f"--classes={CLASSES}", f"--embed={tmp_path / embed}", good[0]
  )
  assert result.returncode == 2 and result.stdout == ""  # no video classified
  assert result.stderr == message.replace("DIR", str(tmp_path)) + "\n", result.stderr
  assert [path.name for path in tmp_path.iterdir()] == ["folder"] and not any((tmp_path / "folder").iterdir())


def test_an_embed_flag_before_the_videos_does_not_overwrite_the_first_video(classify_command, cli_inputs, tmp_path):
  """`--embed a.mp4 b.mp4`: absl takes a.mp4 as --embed's value; the video would have been replaced by embeddings."""
  _, checkpoint, good, _ = cli_inputs
  videos = [tmp_path / video.name for video in good]
  for video, copy in zip(good, videos):
    copy.write_bytes(video.read_bytes())
  result = classify_command(f"--checkpoint={checkpoint}", f"--classes={CLASSES}", "--embed", *videos)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == (
    f"error: --embed={videos[0]} is a file that is not an .npz archive; only one is replaced: name the .npz file to "
    "write\n"
  )
  assert videos[0].read_bytes() == good[0].read_bytes()


def test_an_embed_path_that_is_one_of_the_videos_is_refused(tmp_path):
  video = tmp_path / "v.npz"
  np.savez(video, x=np.zeros(1))  # even an archive: the user asked to classify it
  message = f"--embed={tmp_path}/../{tmp_path.name}/v.npz is one of the videos to classify; name the .npz file to write"
  with pytest.raises(classify.UserError, match=f"^{re.escape(message)}$"):
    classify.check_embed_path(f"{tmp_path}/../{tmp_path.name}/v.npz", [str(video)])


def test_an_existing_npz_archive_may_be_replaced_by_embeddings(tmp_path):
  np.savez(tmp_path / "embeddings", x=np.zeros(1))
  assert classify.check_embed_path(tmp_path / "embeddings.npz", ["a.mp4"]) == tmp_path / "embeddings.npz"


def test_an_empty_embed_flag_is_refused():
  with pytest.raises(classify.UserError, match="^--embed= names no file; name the .npz file to write$"):
    classify.check_embed_path("")


def test_an_embed_file_in_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
  # Tests may run as root, who may write anywhere: the permission is denied here.
  monkeypatch.setattr(classify.os, "access", lambda path, mode: False)
  with pytest.raises(classify.UserError, match=f"^--embed={tmp_path / 'x.npz'}: cannot write in {tmp_path}$"):
    classify.check_embed_path(tmp_path / "x.npz")


@pytest.fixture(scope="module")
def scored(cli_inputs):
  """The tiny model and its results, with embeddings, on the two good videos."""
  _, checkpoint, good, _ = cli_inputs
  model = xclip_jax.load_pretrained(checkpoint)
  return model, list(classify.classify(model, good, CLASSES.split(","), embed=True))


def test_videos_batched_with_several_views_each_score_as_one_by_one(cli_inputs):
  """As on an accelerator, where batches hold 8 videos: each video's views averaged on their own."""
  _, checkpoint, good, _ = cli_inputs
  model = xclip_jax.load_pretrained(checkpoint)
  videos = [good[0], good[1], good[0]]
  one_by_one, batched = (
    list(classify.classify(model, videos, CLASSES.split(","), top_k=0, views=3, embed=True, batch_size=size))
    for size in (1, 3)
  )
  for single, together in zip(one_by_one, batched, strict=True):
    single_p, together_p = dict(single.top), dict(together.top)
    assert single_p.keys() == together_p.keys()
    np.testing.assert_allclose([together_p[name] for name in single_p], list(single_p.values()), rtol=0, atol=1e-5)
    np.testing.assert_allclose(single.embedding, together.embedding, rtol=0, atol=1e-5)


def test_embeddings_are_written_under_the_name_given(scored, tmp_path):
  model, results = scored
  classify.write_embeddings(tmp_path / "embeddings", model, CLASSES.split(","), results)
  assert [path.name for path in tmp_path.iterdir()] == ["embeddings"]  # numpy's savez would add .npz
  assert list(np.load(tmp_path / "embeddings")["videos"]) == [result.video for result in results]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupted_embeddings_write_leaves_the_previous_file_and_no_partial_one(
  scored, tmp_path, monkeypatch, interruption
):
  model, results = scored
  out = tmp_path / "embeddings.npz"
  out.write_bytes(b"the previous run's file")

  def interrupted(file, **arrays):
    file.write(b"PK\x03\x04 half an archive")
    raise interruption

  monkeypatch.setattr(classify.np, "savez", interrupted)
  # A full disk is one line; Ctrl-C goes on as Ctrl-C.
  expected = classify.UserError if isinstance(interruption, OSError) else KeyboardInterrupt
  with pytest.raises(expected) as raised:
    classify.write_embeddings(out, model, CLASSES.split(","), results)
  if expected is classify.UserError:
    assert str(raised.value) == f"--embed={out}: cannot write it: [Errno 28] No space left on device"
  assert [path.name for path in tmp_path.iterdir()] == ["embeddings.npz"]
  assert out.read_bytes() == b"the previous run's file"


@pytest.mark.parametrize(
  "arguments, message",
  [
    (dict(class_names="a shape sliding"), "class_names: a list of class names, not the string 'a shape sliding'"),
    (dict(class_names=["a", 3]), "class_names: class names are strings, not 3"),
    (dict(class_names=[]), "class_names lists no classes"),
    (
      dict(class_names=["rock-climbing", "rock - climbing", "surfing"]),
      "class_names lists 'rock-climbing' and 'rock - climbing', which the model reads as the same text",
    ),
    (
      dict(class_names=["run", "walking " * 80]),
      "class_names: class 1 ('walking walking walking walking walking walking walking w...') is 82 tokens long, more "
      "than the 77 the text tower reads; shorten its name",
    ),
    (dict(top_k=-1), "top_k must be an integer of at least 0 (0: all classes), got -1"),
    (dict(top_k=1.5), "top_k must be an integer of at least 0 (0: all classes), got 1.5"),
    (dict(batch_size=-1), "batch_size must be an integer of at least 1, got -1"),
    (dict(batch_size=2.5), "batch_size must be an integer of at least 1, got 2.5"),
    (dict(views="3"), "views must be one of [1, 3, 12], got '3'"),
    (dict(views=2), "views must be one of [1, 3, 12], got 2"),
    (dict(videos="VIDEO"), "videos: a list of paths, not the one path 'VIDEO'"),
  ],
  ids=[
    "one-string",
    "not-a-string",
    "no-class",
    "read-alike",
    "too-long",
    "top_k",
    "top_k-float",
    "batch_size",
    "batch_size-float",
    "views-string",
    "views",
    "one-path",
  ],
)
def test_mistaken_arguments_from_python_are_value_errors_naming_them(cli_inputs, arguments, message):
  """Not a silent wrong result (a string's letters taken as classes, the least likely class dropped), nor an error
  from deep inside (concurrent.futures on the batch size)."""
  _, _, good, _ = cli_inputs
  model = tiny.model()
  arguments = {"videos": [good[0]], "class_names": CLASSES.split(","), **arguments}
  if arguments["videos"] == "VIDEO":
    arguments["videos"] = good[0]
    message = message.replace("VIDEO", str(good[0]))
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    list(classify.classify(model, **arguments))


@pytest.mark.parametrize(
  "arguments, message",
  [
    (dict(input_size=0), "input_size must be at least 1, got 0"),
    (dict(num_clips=0), "num_clips must be at least 1, got 0"),
  ],
)
def test_views_of_no_pixels_or_clips_are_refused(cli_inputs, arguments, message):
  _, _, good, _ = cli_inputs
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    classify.load_views(good[0], **{"num_frames": 2, "input_size": 32, **arguments})


def test_a_folder_given_as_a_video_is_refused_naming_the_videos_meant(tmp_path):
  message = f"a folder, not a video file (its videos: {tmp_path}/*.mp4)"
  with pytest.raises(IsADirectoryError, match=f"^{re.escape(message)}$"):
    classify.load_views(tmp_path, num_frames=2, input_size=32)


def test_a_model_of_a_smaller_vocabulary_than_clips_is_refused_before_any_video_is_read(cli_inputs):
  """A Hugging Face X-CLIP may set any vocab_size; CLIP's tokenizer gives ids up to 49407 (its end of text)."""
  _, _, good, _ = cli_inputs
  small = tiny.model(vocab_size=1000)
  with pytest.raises(classify.UserError, match="^the class names' CLIP token ids reach 49407, but the model's vocab"):
    next(classify.classify(small, good, CLASSES.split(",")))


def test_help_lists_the_compilation_cache_flag(monkeypatch):
  """The README says classify takes --compilation_cache_dir; --help lists only the program's key flags."""
  defined = flags.FlagValues()  # the command's flags, defined apart from this process's
  for name in ("DEFINE_string", "DEFINE_list", "DEFINE_integer", "DEFINE_enum", "DEFINE_boolean"):
    monkeypatch.setattr(flags, name, functools.partial(getattr(flags, name), flag_values=defined))
  monkeypatch.setattr(
    flags, "adopt_module_key_flags", functools.partial(flags.adopt_module_key_flags, flag_values=defined)
  )
  classify.define_flags()
  assert "--compilation_cache_dir: Folder of JAX's persistent compilation cache" in defined.module_help(classify)
