"""The CLIP tokenizers Stable Diffusion uses, built offline from the BPE file that open-clip-torch ships.

OpenAI's CLIP vocabulary is fully determined by ``bpe_simple_vocab_16e6.txt.gz``: 256 byte symbols, the same
256 with ``</w>``, the first 48 894 merges joined, then ``<|startoftext|>`` (49406) and ``<|endoftext|>``
(49407) — 49 408 ids. We rebuild it exactly as OpenAI's ``SimpleTokenizer`` does and hand the vocabulary and
merges, in memory, to ``transformers.CLIPTokenizer``, so no hub, no network and no files on disk are involved.

Why this class. In transformers ≥ 5 ``CLIPTokenizer`` *is* the fast tokenizer (``CLIPTokenizerFast`` is an
alias; the Python "slow" one is gone): a Rust ``tokenizers`` BPE that accepts the vocabulary and merges as
Python objects and encodes a 77-token prompt in well under a millisecond. Its text front end is not OpenAI's:

* normalisation: NFC + whitespace collapse + lowercase, where OpenAI (and A1111, and open_clip for SD2.x)
  run ``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapse and ``str.lower`` ("&amp;", curly
  quotes, full-width letters, "e&#769;" all tokenize differently);
* word splitting: the same pattern, but in Oniguruma, whose Unicode tables are older than the ``regex``
  package's (e.g. CJK Extension J, new Tangut letters count as letters only in the latter), and without
  OpenAI's ``IGNORECASE`` flag, which makes ``regex`` drop a few combining marks whose case fold is a letter
  (U+0345 COMBINING GREEK YPOGEGRAMMENI).

``OpenAICLIPTokenizer`` therefore cleans and splits the text in Python exactly as OpenAI does (same functions,
same ``regex`` pattern and flags) and feeds the words to the Rust pipeline as pre-tokenised input, whose only
remaining steps are byte-level mapping, BPE, BOS/EOS, truncation and padding. The ids then equal the reference
(``open_clip.tokenizer.SimpleTokenizer``) on any text; tests/test_tokenizer.py checks this.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import ftfy
import regex
from tokenizers import pre_tokenizers
from transformers import BatchEncoding, CLIPTokenizer

PadToken = Literal["endoftext", "!"]

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_BOS_ID = 49406
CLIP_EOS_ID = 49407
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48 894: the file holds more; OpenAI uses the first ones only
_PAD_CHOICES: tuple[PadToken, ...] = ("endoftext", "!")
# OpenAI CLIP's word pattern, flags included (a compiled pattern is immutable).
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def bpe_vocab_path() -> Path:
    """Return the path of the CLIP BPE file shipped inside the installed ``open_clip`` package.

    The package directory comes from ``importlib.util.find_spec``, which locates a top-level package without
    executing it: ``importlib.resources.files("open_clip")`` would import open_clip, which takes seconds,
    imports torch and sets ``TOKENIZERS_PARALLELISM`` in the process environment.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{BPE_FILE_NAME} not found in the open_clip package ({locations or 'not installed'}); "
        "install open-clip-torch"
    )


def _byte_symbols() -> list[str]:
    """Return the 256 printable stand-ins for the bytes 0..255 in OpenAI's vocabulary order (GPT-2 scheme)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    # The remaining (whitespace/control) bytes follow, mapped in byte order to U+0100, U+0101, ...
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def load_clip_bpe(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read the BPE file (default: open_clip's) into CLIP's ``(vocab, merges)`` exactly as OpenAI does.

    Returns new objects on every call; the caller owns them.
    """
    source = bpe_vocab_path() if path is None else path
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: line {number} is not a BPE merge of two symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), CLIP_BOS, CLIP_EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(merges) != _N_MERGES or len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"{source}: expected {_N_MERGES} merges and {CLIP_VOCAB_SIZE} distinct tokens, "
            f"got {len(merges)} and {len(vocab)}"
        )
    return vocab, merges


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: ftfy, HTML unescape (twice), collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def clip_words(text: str) -> list[str]:
    """Split text into the words OpenAI CLIP runs BPE on: `clean_text`, then CLIP's word pattern."""
    words: list[str] = _WORD_PATTERN.findall(clean_text(text))
    return words


def _words_nested(text: Any) -> Any:
    """Apply `clip_words` to a string, or to every string in (nested) lists/tuples; return new objects."""
    if isinstance(text, str):
        return clip_words(text)
    if isinstance(text, list | tuple):
        return type(text)(_words_nested(item) for item in text)
    return text


class OpenAICLIPTokenizer(CLIPTokenizer):
    """``transformers.CLIPTokenizer`` with OpenAI's text front end, safe to share between threads.

    Text (single, batch, or pairs) is split with `clip_words` and handed to the Rust pipeline as words; the
    backend's normaliser and word splitter are removed (its byte-level mapping stays). Special tokens typed in
    the text (``<|endoftext|>``) become their ids, as in OpenAI's tokenizer. Pre-tokenised input
    (``is_split_into_words=True``) is refused. The base class reconfigures padding/truncation on the shared
    Rust tokenizer at every call, so calls are serialised by a lock.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the tokenizer (arguments as ``CLIPTokenizer``) and strip the backend's text front end."""
        super().__init__(*args, **kwargs)
        self.backend_tokenizer.normalizer = None
        self.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=False, use_regex=False
        )
        self._encode_lock = threading.Lock()

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> BatchEncoding:
        """Split the text into CLIP words, then encode them as the base class does (options by keyword)."""
        if args:
            raise TypeError("OpenAICLIPTokenizer._encode_plus: pass options by keyword")
        if kwargs.get("is_split_into_words", False):
            raise ValueError("OpenAICLIPTokenizer: is_split_into_words=True is not supported; pass the text")
        words, pair_words = _words_nested(text), _words_nested(text_pair)
        with self._encode_lock:
            return super()._encode_plus(words, pair_words, **{**kwargs, "is_split_into_words": True})

    def __getstate__(self) -> dict[str, Any]:
        """Pickle/deepcopy support: everything but the lock."""
        state = self.__dict__.copy()
        del state["_encode_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the lock and the decode fix ``CLIPTokenizer`` attaches to its backend (pickle loses it)."""
        self.__dict__.update(state)
        self._encode_lock = threading.Lock()
        rewrap: Callable[[], None] = self._wrap_decode_method_backend_tokenizer  # untyped in transformers
        rewrap()


def build_clip_tokenizer(pad: PadToken = "endoftext") -> OpenAICLIPTokenizer:
    """Build a new CLIP tokenizer of Stable Diffusion (~0.2 s); most callers want the shared `clip_tokenizer`.

    ``pad="endoftext"``: SD1.x's openai/clip-vit-large-patch14 tokenizer, pads with ``<|endoftext|>`` (49407).
    ``pad="!"``: SD2.x's and SDXL's second tokenizer (OpenCLIP ViT-H / bigG), pads with ``"!"`` (id 0).
    Both: bos 49406, eos = unk = 49407, ``model_max_length`` 77. Reads only the BPE file: no network, no hub.
    """
    if pad not in _PAD_CHOICES:
        raise ValueError(f"pad must be one of {', '.join(map(repr, _PAD_CHOICES))}; got {pad!r}")
    vocab, merges = load_clip_bpe()
    tokenizer = OpenAICLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)
    if pad == "!":
        # Set after construction: passing pad_token="!" to the constructor registers "!" as a special added
        # token, which the tokenizer then splits out of prompts ("wow!" -> 0, not "!</w>" 256).
        tokenizer.pad_token = "!"
    return tokenizer


@functools.lru_cache(maxsize=len(_PAD_CHOICES))
def _shared_clip_tokenizer(pad: PadToken) -> OpenAICLIPTokenizer:
    """Memoised `build_clip_tokenizer` (keyed by the pad choice alone)."""
    return build_clip_tokenizer(pad)


def clip_tokenizer(pad: PadToken = "endoftext") -> OpenAICLIPTokenizer:
    """Return the shared CLIP tokenizer for ``pad`` (see `build_clip_tokenizer`), built on first use.

    Thread-safe to call; treat the result as immutable: to add tokens or change settings, ``copy.deepcopy`` it
    (or build a private one with `build_clip_tokenizer`).
    """
    return _shared_clip_tokenizer(pad)
