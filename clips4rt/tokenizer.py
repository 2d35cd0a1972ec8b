"""CLIP's byte-level BPE tokenizer in pure Python (no torch, no ``regex``, no ftfy).

Produces the same ids as ``open_clip.tokenize`` (lower-case cleaning, the default):
text cleanup, whitespace collapse, lower-casing, BPE over UTF-8 bytes, then
``<start_of_text> ... <end_of_text>`` padded with zeros to ``context_length``;
overlong texts are truncated and still end with ``<end_of_text>``.

Known difference: code points that this Python's Unicode database leaves unassigned
(category Cn; Python 3.11 has Unicode 14) but that the ``regex`` module open_clip
uses knows as characters of a later Unicode (~7 000 code points with regex 2026.11)
may tokenize differently. Everything else is id-exact, lone surrogates included
(they become U+FFFD, as ftfy makes them); tests/test_fuzz.py checks it on random
Unicode.

Text cleanup follows ftfy's ``fix_text`` defaults except mojibake repair (text
decoded in the wrong encoding is taken as it is): HTML entities, C1 controls as
Windows-1252, Latin ligatures, full/half-width forms, curly quotes, line breaks,
terminal escapes, control characters, NFC. The vocabulary (OpenAI CLIP,
MIT licence) ships as package data and loads on first use.
"""

from __future__ import annotations

import gzip
import html
import re
import sys
import unicodedata
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["tokenize", "Tokenizer", "get_tokenizer", "clean_text"]

SOT, EOT = "<start_of_text>", "<end_of_text>"
_N_MERGES = 49152 - 256 - 2


# ---------------------------------------------------------------- text cleanup
_LIGATURES = str.maketrans(
    {
        "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ",
        "ǅ": "Dž", "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj",
        "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt",
        "ﬆ": "st",
    }
)  # fmt: skip
_CONTROL = dict.fromkeys(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
     *range(0xFFF9, 0xFFFD)]
)  # fmt: skip
_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1_RE = re.compile("[\x80-\x9f]")
_TERMINAL_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")
_SQUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DQUOTE_RE = re.compile("[\u201c-\u201f]")
_BREAK_RE = re.compile("\r\n|\r|\u2028|\u2029|\u0085")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@lru_cache(maxsize=1)
def _width_map() -> dict[int, str]:
    table = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            table[i] = alt
    return table


def _c1_as_cp1252(m: re.Match) -> str:
    b = m.group(0).encode("latin-1")
    try:
        return b.decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: browsers keep them
        return m.group(0)


def _surrogate_pair(m: re.Match) -> str:
    hi, lo = (ord(c) for c in m.group(0))
    return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))


def _unescape_entity(m: re.Match) -> str:
    text = m.group(0)
    out = html.unescape(text)
    if out == text and text.isupper():  # ftfy reads all-caps Latin entities ('&EACUTE;')
        low = html.unescape(text.lower())
        if low != text.lower() and len(low) == 1:
            return low.upper()
    return out


def _ftfy_lite(text: str) -> str:
    unescape = "<" not in text
    while True:
        orig = text
        if unescape:
            text = _ENTITY_RE.sub(_unescape_entity, text)
        text = _C1_RE.sub(_c1_as_cp1252, text)
        text = text.translate(_LIGATURES).translate(_width_map())
        text = _DQUOTE_RE.sub('"', _SQUOTE_RE.sub("'", text))
        text = _BREAK_RE.sub("\n", text)
        text = _SURROGATE_PAIR_RE.sub(_surrogate_pair, text)
        text = _LONE_SURROGATE_RE.sub("\ufffd", text)  # as ftfy: not encodable
        text = _TERMINAL_RE.sub("", text).translate(_CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy-style fixes, HTML unescape (twice),
    whitespace collapse, lower-case."""
    text = html.unescape(html.unescape(_ftfy_lite(text))).strip()
    # U+0345 case-folds to a letter, so open_clip's case-insensitive pattern matches it
    # with no alternative: it separates words there without a token, as a space here
    return " ".join(text.split()).lower().replace("\u0345", " ")


# ---------------------------------------------------------------- pre-tokenizer
def _char_classes(prefixes: str) -> list[str]:
    """Regex character-class bodies of the code points whose Unicode category
    starts with each of ``prefixes`` (e.g. "LN" -> [\\p{L}, \\p{N}]), in one pass."""
    ranges: dict[str, list[list[int]]] = {p: [] for p in prefixes}
    category = unicodedata.category
    for cp in range(sys.maxunicode + 1):
        major = category(chr(cp))[0]
        if major in ranges:
            r = ranges[major]
            if r and r[-1][1] == cp - 1:
                r[-1][1] = cp
            else:
                r.append([cp, cp])
    esc = re.escape
    return [
        "".join(esc(chr(a)) if a == b else f"{esc(chr(a))}-{esc(chr(b))}" for a, b in ranges[p])
        for p in prefixes
    ]


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
    # CLIP: <special>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
    letters, numbers = _char_classes("LN")
    return re.compile(
        rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[{letters}]+|[{numbers}]|[^\s{letters}{numbers}]+",
        re.IGNORECASE,
    )


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class Tokenizer:
    """CLIP BPE tokenizer. Use :func:`get_tokenizer` for the shared instance."""

    def __init__(self) -> None:
        raw = resources.files("clips4rt").joinpath("data/bpe_simple_vocab_16e6.txt.gz")
        merges = gzip.decompress(raw.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : _N_MERGES + 1]]
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, token: str) -> list[str]:
        word = [*token[:-1], token[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _encode_token(self, token: str) -> list[int]:
        ids = self._cache.get(token)
        if ids is None:
            if token in (SOT, EOT):
                ids = [self.encoder[token]]
            else:
                mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
                ids = [self.encoder[t] for t in self._bpe(mapped)]
            if len(self._cache) < 100_000:
                self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens."""
        ids: list[int] = []
        for token in _pattern().findall(clean_text(text)):
            ids.extend(self._encode_token(token))
        return ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        out = np.zeros((len(texts), context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__} at {row}")
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return out


@lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The process-wide tokenizer (vocabulary loaded on first call)."""
    return Tokenizer()


def tokenize(texts: str | list[str], context_length: int = 77) -> np.ndarray:
    """Tokenize text(s) for CLIP's text tower.

    Returns:
        int32 array (N, context_length): start token, BPE ids, end token, zeros.
    """
    return get_tokenizer()(texts, context_length)
