"""The CLIP byte-level BPE tokenizer, giving the same ids as OpenAI's CLIP.

X-CLIP encodes class names with `clip.tokenize` from openai/CLIP. This module
reproduces it id for id, cleaning included (ftfy fixing, double HTML
unescaping, whitespace collapsing, lower-casing), and returns numpy arrays so
that no PyTorch is needed.

  ids = tokenize(["abseiling", "air drumming"])  # (2, 77) int32

The merges file `bpe_simple_vocab_16e6.txt.gz` ships next to this module. It is
OpenAI's CLIP vocabulary (MIT licence), taken unchanged from the
open_clip_torch 3.3.0 wheel on PyPI (MIT licence; sha256
924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a, the same
bytes as openai/CLIP's copy).

Cleaning and splitting text need ftfy and regex, imported on first use: the
model (which imports this module) and `decode` run without them.
"""

from collections.abc import Iterable, Sequence
import functools
import gzip
import html
import importlib
import operator
import pathlib
import types

import numpy as np

DEFAULT_BPE_PATH = pathlib.Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
START_TOKEN = 49406
END_TOKEN = 49407
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77

_END_OF_WORD = "</w>"
# CLIP keeps the first 48894 merges of the file: 256 bytes, 256 end-of-word
# bytes, these merges and the two special tokens make the 49408-entry vocab.
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2


def _import_for_text(name: str) -> types.ModuleType:
  """Imports ftfy or regex, which only cleaning and splitting text need."""
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as error:
    if error.name != name:  # a dependency of the package is missing: its own error says which
      raise
    raise ImportError(f"tokenizing text needs {name}, which is not installed: pip install {name}") from error


@functools.cache
def _text_tools():
  """(ftfy's fix_text, pre-token pattern, whitespace-run pattern), built on first use."""
  fix_text = _import_for_text("ftfy").fix_text
  regex = _import_for_text("regex")
  # Pre-tokenization of CLIP: special tokens, English contractions, runs of
  # letters, single digits, runs of other non-space symbols. The regex module
  # (not re) is needed for \p{...}, and its \s also decides whitespace
  # cleaning. IGNORECASE still matters after lower-casing: "'ſ" (long s)
  # matches "'s".
  pre_token = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
  )
  return fix_text, pre_token, regex.compile(r"\s+")


class TextTooLongError(ValueError, RuntimeError):
  """A text does not fit the context length.

  A ValueError because the input is at fault; also a RuntimeError because that
  is what `clip.tokenize` raises, so callers written against it still catch it.
  """

  def __init__(self, row: int, length: int, context_length: int, text: str):
    super().__init__(
      f"text {row} is {length} tokens long with start and end tokens, more than the context length {context_length} "
      f"(pass truncate=True to cut it): {text!r}"
    )
    self.row, self.length, self.context_length = row, length, context_length

  def naming(self, name: str, source: str) -> str:
    """The problem in one line for a user whose class name `name` (the text) comes from `source`."""
    short = name if len(name) <= 60 else name[:57] + "..."
    return (
      f"{source}: class {self.row} ({short!r}) is {self.length} tokens long, more than the {self.context_length} the "
      "text tower reads; shorten its name"
    )


def _byte_symbols() -> list[tuple[int, str]]:
  """Pairs each byte value with the character standing for it in the BPE.

  CLIP's BPE (from GPT-2) works on strings of printable characters, one per
  UTF-8 byte: printable Latin-1 bytes stand for themselves, the other 68 bytes
  (controls, space, soft hyphen...) are moved, in byte order, to code points
  256 and up, so that no BPE symbol is whitespace.

  Returns:
    (byte, character) pairs in vocabulary order: the printable bytes first,
    then the moved ones. Single-byte symbols have these ids.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  moved = [byte for byte in range(256) if byte not in set(printable)]
  return [(byte, chr(byte)) for byte in printable] + [(byte, chr(256 + offset)) for offset, byte in enumerate(moved)]


def clean_text(text: str) -> str:
  """Cleans text exactly as CLIP does before splitting it into tokens.

  Fixes mojibake and other damage with ftfy, unescapes HTML entities twice
  ("&amp;quot;" -> '"'), collapses whitespace runs to one space, strips and
  lower-cases.

  Args:
    text: any string.

  Returns:
    The cleaned string.
  """
  fix_text, _, whitespace_run = _text_tools()
  text = html.unescape(html.unescape(fix_text(text)))
  return whitespace_run.sub(" ", text.strip()).strip().lower()


def _read_merges(bpe_path: pathlib.Path) -> list[tuple[str, str]]:
  """Reads the merges CLIP uses from a gzipped BPE merges file."""
  with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  # Line 1 is a version header; CLIP uses the next _NUM_MERGES lines.
  if len(lines) < _NUM_MERGES + 1:
    raise ValueError(f"{bpe_path}: has {len(lines) - 1} merge lines, CLIP needs {_NUM_MERGES}")
  merges = []
  for line_number, line in enumerate(lines[1 : _NUM_MERGES + 1], start=2):
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f"{bpe_path}, line {line_number}: expected two symbols separated by a space, got {line!r}")
    merges.append((parts[0], parts[1]))
  return merges


class Tokenizer:
  """CLIP's byte-level BPE tokenizer (49408 ids, `</w>` marks word ends).

  Attributes:
    vocab: the token strings, indexed by id.
  """

  def __init__(self, bpe_path: str | pathlib.Path = DEFAULT_BPE_PATH):
    """Loads the merges file.

    Args:
      bpe_path: gzipped BPE merges file; by default the bundled CLIP one.
    """
    merges = _read_merges(pathlib.Path(bpe_path))
    byte_symbols = _byte_symbols()
    single_bytes = [char for _, char in byte_symbols]
    self.vocab = (
      single_bytes
      + [s + _END_OF_WORD for s in single_bytes]
      + [first + second for first, second in merges]
      + [START_OF_TEXT, END_OF_TEXT]
    )
    self._token_to_id = {token: i for i, token in enumerate(self.vocab)}
    self._merge_rank = {merge: rank for rank, merge in enumerate(merges)}
    self._byte_to_char = dict(byte_symbols)
    char_to_byte = {char: byte for byte, char in byte_symbols}
    # Decoding turns `</w>` into a space; special tokens are whole words too.
    self._id_to_bytes = []
    for token in self.vocab:
      token_bytes = bytes(char_to_byte[char] for char in token.removesuffix(_END_OF_WORD))
      if token.endswith(_END_OF_WORD) or token in (START_OF_TEXT, END_OF_TEXT):
        token_bytes += b" "
      self._id_to_bytes.append(token_bytes)
    # Words repeat a lot (class names, prompt templates), and BPE is the slow
    # part, so the ids of each pre-token are memoised.
    self._pre_token_ids = {
      START_OF_TEXT: [START_TOKEN],
      END_OF_TEXT: [END_TOKEN],
    }

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` after cleaning, without start and end tokens.

    As in CLIP, "<|startoftext|>" and "<|endoftext|>" written in the text
    become the special tokens' ids.

    Args:
      text: any string.

    Returns:
      The BPE ids, in text order.
    """
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}: {text!r}")
    ids = []
    _, pre_token_pattern, _ = _text_tools()
    for pre_token in pre_token_pattern.findall(clean_text(text)):
      cached = self._pre_token_ids.get(pre_token)
      if cached is None:
        cached = [self._token_to_id[symbol] for symbol in self._bpe(pre_token)]
        self._pre_token_ids[pre_token] = cached
      ids.extend(cached)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of token ids, with one space after each word and none at the end.

    Decoding `encode(text)` gives the pre-tokens of `clean_text(text)` joined
    by single spaces ("Rock, paper" -> "rock , paper"). Byte sequences that are
    not valid UTF-8 (from a cut-off multi-byte character) become U+FFFD.

    Args:
      ids: token ids, e.g. from `encode` or a row of `tokenize` (there, the
        start and end tokens decode to their names and padding zeros to "!").

    Returns:
      The decoded text.
    """
    decoded = []
    for position, token_id in enumerate(ids):
      token_id = operator.index(token_id)
      if not 0 <= token_id < len(self.vocab):
        raise ValueError(
          f"decode: id {token_id} at position {position} is outside the vocabulary [0, {len(self.vocab)})"
        )
      decoded.append(self._id_to_bytes[token_id])
    return b"".join(decoded).decode("utf-8", errors="replace").removesuffix(" ")

  def _bpe(self, pre_token: str) -> list[str]:
    """Splits one pre-token into vocabulary symbols by CLIP's BPE merges."""
    chars = [self._byte_to_char[b] for b in pre_token.encode("utf-8")]
    symbols = chars[:-1] + [chars[-1] + _END_OF_WORD]
    while len(symbols) > 1:
      ranks = [self._merge_rank.get(pair, _NUM_MERGES) for pair in zip(symbols[:-1], symbols[1:])]
      best_rank = min(ranks)
      if best_rank == _NUM_MERGES:
        break
      best = ranks.index(best_rank)
      first, second = symbols[best], symbols[best + 1]
      # Merge every occurrence of the best pair, left to right without
      # overlap ("a a a" -> "aa a"), as the reference implementation does.
      merged = []
      i = 0
      while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return symbols


@functools.cache
def default_tokenizer() -> Tokenizer:
  """The shared tokenizer on the bundled vocabulary, loaded on first use."""
  return Tokenizer()


def tokenize(
  texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> np.ndarray:
  """Token ids of texts framed by start/end tokens and zero-padded, like CLIP.

  Args:
    texts: one string or a sequence of strings.
    context_length: length of each row; CLIP models use 77.
    truncate: if True, a text too long for the context is cut and its last id
      replaced by the end token; if False, such a text raises.

  Returns:
    An int32 array of shape (number of texts, context_length); a single
    string gives one row.

  Raises:
    TextTooLongError: a text needs more than `context_length` ids and
      `truncate` is False.
    TypeError: an element of `texts` is not a string.
    ValueError: `context_length` leaves no room for the start and end tokens.
  """
  if isinstance(texts, str):
    texts = [texts]
  texts = list(texts)
  if context_length < 2:
    raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
  tokenizer = default_tokenizer()
  result = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"texts[{row}] is a {type(text).__name__}, not a str: {text!r}")
    ids = [START_TOKEN] + tokenizer.encode(text) + [END_TOKEN]
    if len(ids) > context_length:
      if not truncate:
        raise TextTooLongError(row, len(ids), context_length, text)
      ids = ids[: context_length - 1] + [END_TOKEN]
    result[row, : len(ids)] = ids
  return result
