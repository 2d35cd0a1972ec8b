"""Prompt latency (issue 32): the text graph takes any token length, the runtime cuts each
batch after its longest prompt's end token, and embeddings stay those of the full
context; older fixed-length graphs keep working; the optional int8 text graph."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import clips4rt  # noqa: E402
from clips4rt import bundle as B  # noqa: E402
from clips4rt.prompts import IMAGENET_TEMPLATES  # noqa: E402
from clips4rt.text import TextEncoder, token_lengths  # noqa: E402
from clips4rt.tokenizer import tokenize  # noqa: E402

NAMES = ["cat", "traffic light", "a very small red fire hydrant", "sky"]
EXACT = 0.99999  # cosine per prompt (the bound): float32 sums in another order


class Spy:
    """A text session that records the token widths it is given."""

    def __init__(self, sess):
        self.sess, self.widths, self.rows = sess, [], []

    def run(self, out, feed):
        x = feed[B.TEXT_INPUT]
        self.widths.append(x.shape[1])
        self.rows.append(x)
        return self.sess.run(out, feed)

    def get_inputs(self):
        return self.sess.get_inputs()


def _encoder(session, info, path) -> TextEncoder:
    import dataclasses

    return TextEncoder(session, dataclasses.replace(info, prompt_templates=IMAGENET_TEMPLATES),
                       path)  # fmt: skip


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def sclip(bundles):
    seg = clips4rt.Segmenter(bundles["sclip"])
    return seg, bundles["sclip"].with_name(seg.info.text_model)


@pytest.fixture(scope="module")
def fixed_graph(tmp_path_factory, tiny_clip):
    """The text graph as exports before the dynamic axis wrote it (length fixed at 77)."""
    from clips4rt.export.dense_clip import CLIPText
    from clips4rt.export.graphs import _onnx_export

    path = tmp_path_factory.mktemp("fixed") / "fixed.text.onnx"
    ex = torch.from_numpy(tokenize(["a photo of a cat."], 77))
    _onnx_export(CLIPText(tiny_clip[0]).eval(), ex, path, (B.TEXT_INPUT, B.TEXT_OUTPUT),
                 {B.TEXT_INPUT: {0: "n"}, B.TEXT_OUTPUT: {0: "n"}})  # fmt: skip
    return path


def test_text_graph_has_a_length_axis_and_is_exact(sclip, tiny_clip):
    """Cut to each prompt's own length, the graph gives open_clip's embeddings at 77."""
    seg, path = sclip
    length = seg.text.session.get_inputs()[0].shape[1]
    assert isinstance(length, str) and seg.text.fixed_length is None
    prompts = [t.replace("{}", c) for c in NAMES for t in IMAGENET_TEMPLATES]
    tokens = tokenize(prompts, 77)
    with torch.no_grad():
        ref = tiny_clip[0].encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    sess = seg.text.session
    for n in sorted(set(token_lengths(tokens))):  # every length the prompts have
        rows = token_lengths(tokens) <= n
        out = sess.run(None, {B.TEXT_INPUT: np.ascontiguousarray(tokens[rows, :n])})[0]
        assert _cos(out, ref[rows]).min() >= EXACT, n
    lengths = token_lengths(tokens)
    assert lengths.max() < 20 and lengths.min() >= 4  # cut short: the point of the axis


def test_runtime_cuts_each_batch_to_its_longest_prompt(sclip):
    seg, path = sclip
    spy = Spy(seg.text.session)
    enc = _encoder(spy, seg.info, path)
    emb = enc.embeddings(NAMES)
    total = sum(len(r) for r in spy.rows)
    assert total == len(NAMES) * len(IMAGENET_TEMPLATES)  # every prompt once
    for x, w in zip(spy.rows, spy.widths):
        assert w == token_lengths(x).max() < seg.info.context_length  # cut, never too short
        assert (x[np.arange(len(x)), token_lengths(x) - 1] > 0).all()  # end tokens kept
    assert spy.widths == sorted(spy.widths)  # sorted by length: little padding per batch
    full = _encoder(Spy(_Full(seg.text.session)), seg.info, path).embeddings(NAMES)
    assert _cos(emb, full).min() >= EXACT


class _Full:
    """The same session, fed every batch padded back to the full context length."""

    def __init__(self, sess):
        self.sess = sess

    def run(self, out, feed):
        x = feed[B.TEXT_INPUT]
        pad = np.zeros((len(x), 77), x.dtype)
        pad[:, : x.shape[1]] = x
        return self.sess.run(out, {B.TEXT_INPUT: pad})

    def get_inputs(self):
        class Fixed:
            shape = ["n", 77]

        return [Fixed()]


def test_fixed_length_graphs_keep_working(sclip, fixed_graph):
    """A text graph of an older export (length fixed at 77): fed whole, equal results."""
    seg, path = sclip
    sess = ort.InferenceSession(str(fixed_graph), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1] == 77
    spy = Spy(sess)
    enc = _encoder(spy, seg.info, fixed_graph)
    assert enc.fixed_length == 77
    old = enc.embeddings(NAMES)
    assert set(spy.widths) == {77}
    new = _encoder(seg.text.session, seg.info, path).embeddings(NAMES)
    assert _cos(old, new).min() >= EXACT


def test_embedded_toy_bundle_is_a_fixed_length_graph():
    """The shipped toy bundle predates the length axis: it runs, at its 32 tokens."""
    seg = clips4rt.Segmenter(clips4rt.default_model())
    assert seg.text.fixed_length == seg.info.context_length == 32
    spy = Spy(seg.text.session)
    seg.text.session = spy
    seg.text_embeddings(["a brand new class"])
    assert set(spy.widths) == {32}


# ------------------------------------------------------------------ int8 text graph
@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, tiny_clip):
    from clips4rt.export.graphs import export_dense_clip

    model, name, mean, std = tiny_clip
    out = tmp_path_factory.mktemp("int8text") / "m.onnx"
    info, errs = export_dense_clip(model, name, None, mean, std, "sclip", out, window=0,
                                   negatives=(), int8_text=True, fp16_weights=True)  # fmt: skip
    return out, info, errs


def test_int8_text_graph_is_checked_and_recorded(int8_bundle, sclip):
    import onnx

    out, info, errs = int8_bundle
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.text.onnx"]
    seg = clips4rt.Segmenter(out)
    rep = seg.info.provenance["text_int8"]
    assert rep == info.provenance["text_int8"]
    assert rep["prompts"] == 20 * 80 and rep["bound"] == 0.99
    assert 0.99 <= rep["cosine_min"] <= rep["cosine_mean"] < 1.0  # quantized, and close
    assert 0.5 <= rep["label_agreement"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(out.with_name("m.text.onnx"))).graph.node}
    assert "MatMulInteger" in ops and seg.text.fixed_length is None
    # the float parity of the text graph was still checked, cut and whole
    assert {"text", "text@8"} <= set(errs) and max(errs.values()) <= 5e-3
    # embeddings near the float bundle's (the same tiny CLIP), and not equal to them
    tpl = ["a photo of a {}.", "art of the {}."]
    cos = _cos(seg.text_embeddings(NAMES, tpl), sclip[0].text_embeddings(NAMES, tpl))
    assert 0.99 <= cos.min() and cos.max() < 1 - 1e-7


def test_int8_text_gate_refuses_and_leaves_no_float_copy(tmp_path, tiny_clip, monkeypatch):
    import clips4rt.export.quantize as Q
    from clips4rt.export.graphs import export_dense_clip

    monkeypatch.setattr(Q, "TEXT_MIN_COSINE", 1.000001)  # unreachable: the gate must refuse
    model, name, mean, std = tiny_clip
    with pytest.raises(RuntimeError, match="--int8-text"):
        export_dense_clip(model, name, None, mean, std, "sclip", tmp_path / "m.onnx",
                          window=0, negatives=(), int8_text=True, templates="simple")  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if "float" in p.name]


def test_int8_text_flag_conflicts(tmp_path, tiny_config, capsys):
    from clips4rt.export.cli import main

    rc = main(["--model-config", str(tiny_config), "--int8-text", "--fp16",
               "-o", str(tmp_path / "m.onnx")])  # fmt: skip
    assert rc == 2 and "--int8-text" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
