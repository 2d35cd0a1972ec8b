"""QuickGELU where the weights need it: built through open_clip's own pretrained path,
offline (the download is redirected to a local random state dict)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from clips4rt.export.clip_loader import activation, load_clip, needs_quick_gelu  # noqa: E402


def test_openai_tags_need_quick_gelu():
    assert needs_quick_gelu("ViT-B-16", "openai")
    assert needs_quick_gelu("ViT-L-14", "openai")
    assert not needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    assert not needs_quick_gelu("ViT-B-16", None)
    assert not needs_quick_gelu("ViT-B-16", "/some/checkpoint.pt")


@pytest.fixture
def tagged_tiny(tmp_path, monkeypatch, tiny_config):
    """open_clip model 'tiny-vit' with a pretrained tag 'quicktag' marked quick_gelu
    (as open_clip's table marks OpenAI's), its download served from a local file."""
    import json

    import open_clip.factory as factory
    import open_clip.pretrained as pretrained

    cfg = json.loads(tiny_config.read_text())
    open_clip.add_model_config(tiny_config)
    torch.manual_seed(0)
    ref = open_clip.create_model("tiny-vit")
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), weights)
    tag = {"url": "", "hf_hub": "", "quick_gelu": True}
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny-vit", {"quicktag": tag, "plain": {
        "url": "", "hf_hub": ""}})  # fmt: skip
    monkeypatch.setattr(factory, "download_pretrained", lambda *a, **k: str(weights))
    return cfg, ref


def test_loader_builds_quick_gelu_for_a_quick_gelu_tag(tagged_tiny):
    _, ref = tagged_tiny
    model, *_ = load_clip("tiny-vit", "quicktag")
    assert activation(model) == "quick_gelu"
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(model.transformer.resblocks[-1].mlp.gelu).__name__ == "QuickGELU"
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k  # the weights were loaded
    plain, *_ = load_clip("tiny-vit", "plain")
    assert activation(plain) == "gelu"


def test_quick_gelu_mismatch_is_an_error(tagged_tiny, monkeypatch):
    import clips4rt.export.clip_loader as loader

    monkeypatch.setattr(loader, "needs_quick_gelu", lambda name, pretrained: False)
    with pytest.raises(ValueError, match="QuickGELU mismatch"):
        load_clip("tiny-vit", "quicktag")


def test_activation_recorded_in_bundle(tagged_tiny, tmp_path):
    from train.export import export_dense_clip

    model, name, mean, std = load_clip("tiny-vit", "quicktag")
    info, _ = export_dense_clip(model, name, "quicktag", mean, std, "sclip",
                                tmp_path / "m.onnx", templates="simple")  # fmt: skip
    assert info.provenance["activation"] == "quick_gelu"
