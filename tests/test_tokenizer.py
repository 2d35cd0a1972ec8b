import numpy as np
import pytest

from clips4rt.tokenizer import clean_text, tokenize

CORPUS = [
    "a photo of a cat.",
    "",
    "   ",
    "Hello, World!! It's   a  test\n\t",
    "café naïve résumé Ångström",
    "e\u0301 (combining accent) vs é",
    "北京欢迎你 東京タワー 서울",
    "🐶🐱 emoji 👍🏽 family 👨‍👩‍👧",
    "&amp;lt;b&amp;gt; fish &amp; chips &eacute;t&eacute; &#233;",
    "&EACUTE;T&EACUTE;",
    "a<b &lt; c &amp; d",
    "“curly” ‘quotes’ and `ticks`",
    "\x93windows-1252 quotes\x94",
    "ﬁsh ﬂour ﬀ ĳ",
    "ＦＵＬＬ　ｗｉｄｔｈ １２３ ﾊﾝｶｸ",
    "x²³ ½ Ⅻ 4th 2024 ٣ ௰",
    "don't we'll they're I'd YOU'VE",
    "tab\ttab\x00ctrl\x1b[31mred\x7f",
    "line\r\nbreak\u2028sep\u2029para\x85",
    "ÀÉÎÕÜ ΑΒΓ Привет мир अनुच्छेद مرحبا",
    "snake_case-and-kebab/paths.json?q=1#x",
    "word " * 100,
    "supercalifragilisticexpialidocious " * 3,
    "<start_of_text> literal special tokens <end_of_text>",
]


def test_parity_with_open_clip():
    open_clip = pytest.importorskip("open_clip")
    ours = tokenize(CORPUS)
    ref = open_clip.tokenize(CORPUS).numpy()
    for text, a, b in zip(CORPUS, ours, ref):
        assert (a == b).all(), f"mismatch on {text!r}: {a[:16]} vs {b[:16]}"


def test_shape_dtype_and_layout():
    t = tokenize(["a cat", "a dog"])
    assert t.dtype == np.int32 and t.shape == (2, 77)
    assert t[0, 0] == 49406  # <start_of_text>
    end = int(np.argmax(t[0]))
    assert t[0, end] == 49407 and (t[0, end + 1 :] == 0).all()
    assert tokenize("a cat").shape == (1, 77)


def test_truncation_keeps_end_token():
    t = tokenize(["word " * 200], context_length=77)
    assert (t[0] != 0).all() and t[0, -1] == 49407 and t[0, 0] == 49406
    short = tokenize(["a b c d e f"], context_length=5)
    assert short.shape == (1, 5) and short[0, -1] == 49407


def test_empty_string_is_start_end():
    t = tokenize([""])
    assert t[0, 0] == 49406 and t[0, 1] == 49407 and (t[0, 2:] == 0).all()


def test_clean_text():
    assert clean_text("  Hello\n\tWORLD  ") == "hello world"
    assert clean_text("&amp;amp;") == "&"


def test_non_string_is_refused():
    with pytest.raises(TypeError, match="strings"):
        tokenize(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        tokenize(["x"], context_length=1)
