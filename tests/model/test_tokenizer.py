"""The CLIP tokenizer gives the official ids, cleaning and framing included."""

import gzip
import json
import sys

import numpy as np
import pytest

from xclip_jax.model import tokenizer as tokenizer_lib
from xclip_jax.model.tokenizer import Tokenizer
from xclip_jax.model.tokenizer import tokenize

START = tokenizer_lib.START_TOKEN
END = tokenizer_lib.END_TOKEN

# (input, cleaned text, ids) as given by the official tokenizer: openai/CLIP
# clip/simple_tokenizer.py (the one X-CLIP ships), run once outside this
# repository: `whitespace_clean(basic_clean(text)).lower()` and
# `SimpleTokenizer().encode(text)`.
OFFICIAL_CASES = [
  ("&amp;quot;Rock&amp;quot; climbing", '"rock" climbing', [257, 2172, 257, 9877]),
  (
    "&lt;b&gt;tai chi&lt;/b&gt; &amp;amp; yoga",
    "<b>tai chi</b> & yoga",
    [283, 321, 285, 13040, 4039, 34308, 321, 285, 261, 5523],
  ),
  # With a "<" in the text ftfy leaves entities alone: both unescapes count.
  ("x < y &amp;amp; z", "x < y & z", [343, 283, 344, 261, 345]),
  # Case-insensitive contractions: "'ſ" (long s) matches "'s".
  ("it'ſ fine", "it'ſ fine", [585, 6, 129, 379, 3797]),
  ("  air\tdrumming\n\nbass\u00a0guitar \u2003\u3000 ", "air drumming bass guitar", [1922, 35480, 5992, 5084]),
  ("Playing CELLO", "playing cello", [1629, 23013]),
  (
    "café crème brûlée in Zürich",
    "café crème brûlée in zürich",
    [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489, 530, 89, 6522, 4021],
  ),
  ("İstanbul ﬁsh", "i\u0307stanbul fish", [328, 16384, 11231, 2759]),
  ("打太极拳", "打太极拳", [162, 231, 241, 23170, 103, 162, 252, 223, 162, 233, 367]),
  ("dancing 💃 🎉🎉 👍🏽", "dancing 💃 🎉🎉 👍🏽", [6226, 14333, 13450, 43722]),
  (
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "the mona lisa doesn't have eyebrows.",
    [518, 19143, 7424, 2503, 713, 720, 19923, 269],
  ),
  ("crÃ¨me brÃ»lÃ©e", "crème brûlée", [1075, 12138, 614, 711, 127, 119, 75, 13489]),
  ("ＡＢＣ１２３", "abc123", [5334, 272, 273, 274]),
  ("top 10 moves of 2024", "top 10 moves of 2024", [1253, 272, 271, 6880, 539, 273, 271, 273, 275]),
  ("<|endoftext|> hi", "<|endoftext|> hi", [49407, 1883]),
  ("", "", []),
  (" \t\n ", "", []),
]
OFFICIAL_CASE_IDS = [repr(text)[:40] for text, _, _ in OFFICIAL_CASES]


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.default_tokenizer()


@pytest.mark.parametrize("name", ["hmdb_51", "kinetics_400", "kinetics_600", "ucf_101"])
def test_tokenize_reproduces_official_ids_of_label_lists(tokenizer_golden_dir, name):
  texts = json.loads((tokenizer_golden_dir / "texts.json").read_text())[name]
  with np.load(tokenizer_golden_dir / "token_ids.npz") as golden:
    expected = golden[name]

  ids = tokenize(texts)

  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("text, cleaned, expected_ids", OFFICIAL_CASES, ids=OFFICIAL_CASE_IDS)
def test_clean_text_matches_official(text, cleaned, expected_ids):
  del expected_ids  # Checked by the encode test.
  assert tokenizer_lib.clean_text(text) == cleaned


@pytest.mark.parametrize("text, cleaned, expected_ids", OFFICIAL_CASES, ids=OFFICIAL_CASE_IDS)
def test_encode_matches_official(tokenizer, text, cleaned, expected_ids):
  del cleaned  # Checked by the cleaning test.
  assert tokenizer.encode(text) == expected_ids


def test_vocabulary_has_clip_size_and_special_tokens(tokenizer):
  assert len(tokenizer.vocab) == tokenizer_lib.VOCAB_SIZE
  assert tokenizer.vocab[START] == "<|startoftext|>"
  assert tokenizer.vocab[END] == "<|endoftext|>"
  # Single bytes come first: "!" is id 0, its word-final form id 256.
  assert tokenizer.vocab[0] == "!"
  assert tokenizer.vocab[256] == "!</w>"


def test_tokenize_frames_ids_with_start_end_and_zero_padding(tokenizer):
  ids = tokenize(["Playing CELLO", ""])

  assert ids.shape == (2, 77)
  np.testing.assert_array_equal(ids[0, :4], [START, 1629, 23013, END])
  np.testing.assert_array_equal(ids[0, 4:], 0)
  np.testing.assert_array_equal(ids[1, :2], [START, END])
  np.testing.assert_array_equal(ids[1, 2:], 0)


def test_tokenize_accepts_single_string():
  np.testing.assert_array_equal(tokenize("air drumming"), tokenize(["air drumming"]))
  assert tokenize("air drumming").shape == (1, 77)


def test_tokenize_empty_list_gives_no_rows():
  ids = tokenize([], context_length=77)

  assert ids.shape == (0, 77)
  assert ids.dtype == np.int32


def test_tokenize_honours_context_length():
  assert tokenize(["abseiling"], context_length=16).shape == (1, 16)


def test_text_exactly_filling_context_is_kept_whole():
  text = " ".join(["dance"] * 75)  # 75 ids + start + end = 77.

  ids = tokenize(text)

  assert ids[0, 0] == START
  assert ids[0, -1] == END
  assert np.count_nonzero(ids) == 77


def test_too_long_text_raises_naming_text_and_limit():
  text = " ".join(["dance"] * 76)

  with pytest.raises(tokenizer_lib.TextTooLongError) as error:
    tokenize(["abseiling", text])

  message = str(error.value)
  assert "context length 77" in message
  assert "text 1 is 78 tokens" in message
  assert text in message
  # clip.tokenize raises RuntimeError; code written against it still works.
  assert isinstance(error.value, RuntimeError)


def test_truncate_cuts_text_and_keeps_end_token_last(tokenizer):
  text = " ".join(f"word{i}" for i in range(60))
  full_ids = tokenizer.encode(text)
  assert len(full_ids) > 75  # The text really is too long.

  ids = tokenize(text, truncate=True)

  assert ids.shape == (1, 77)
  assert ids[0, 0] == START
  np.testing.assert_array_equal(ids[0, 1:76], full_ids[:75])
  assert ids[0, 76] == END


def test_truncate_leaves_short_text_unchanged():
  np.testing.assert_array_equal(tokenize("air drumming", truncate=True), tokenize("air drumming"))


@pytest.mark.parametrize(
  "text",
  [
    "air drumming",
    "playing cello",
    "café crème brûlée in zürich",
    "打太极拳 dancing 💃 🎉🎉 👍🏽",
    "<|startoftext|> hi <|endoftext|>",
  ],
)
def test_decode_inverts_encode_for_cleaned_text(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_separates_pre_tokens_by_spaces(tokenizer):
  # Word ends are all the BPE keeps, so punctuation comes back spaced out.
  ids = tokenizer.encode("&amp;quot;Rock&amp;quot;, paper & scissors!")

  assert tokenizer.decode(ids) == '" rock ", paper & scissors !'


def test_decode_accepts_numpy_ids(tokenizer):
  assert tokenizer.decode(np.array([1629, 23013], np.int32)) == "playing cello"


def test_decode_rejects_id_outside_vocabulary(tokenizer):
  with pytest.raises(ValueError, match="id 49408 at position 1"):
    tokenizer.decode([1629, 49408])


def test_tokenize_rejects_non_string_naming_its_index():
  with pytest.raises(TypeError, match=r"texts\[1\] is a bytes"):
    tokenize(["abseiling", b"air drumming"])


def test_encode_rejects_non_string(tokenizer):
  with pytest.raises(TypeError, match="encode expects a str, got NoneType"):
    tokenizer.encode(None)


def test_tokenize_rejects_context_without_room_for_start_and_end():
  with pytest.raises(ValueError, match="context_length must be at least 2"):
    tokenize("abseiling", context_length=1)


def _write_merges(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(["#version: 0.2"] + lines))


def test_vocab_file_with_too_few_merges_is_rejected(tmp_path):
  path = tmp_path / "short.txt.gz"
  _write_merges(path, ["i n", "t h"])

  with pytest.raises(ValueError, match=r"short.txt.gz: has 2 merge lines"):
    Tokenizer(path)


def test_malformed_merge_line_is_reported_with_its_line_number(tmp_path):
  path = tmp_path / "bad.txt.gz"
  lines = ["i n"] * 48894
  lines[4] = "a b c"
  _write_merges(path, lines)

  with pytest.raises(ValueError, match=r"bad.txt.gz, line 6: .*'a b c'"):
    Tokenizer(path)


@pytest.mark.parametrize("package", ["ftfy", "regex"])
def test_tokenizing_without_ftfy_or_regex_names_the_package_to_install(monkeypatch, tokenizer, package):
  # None in sys.modules fails the import as for a package not installed; a failed build of the tools is not cached.
  tokenizer_lib._text_tools.cache_clear()
  monkeypatch.setitem(sys.modules, package, None)
  with pytest.raises(ImportError, match=rf"^tokenizing text needs {package}, .*: pip install {package}$"):
    tokenize("abseiling")
  assert tokenizer.decode([START, 320, END]) == "<|startoftext|> a <|endoftext|>"  # decoding needs neither
