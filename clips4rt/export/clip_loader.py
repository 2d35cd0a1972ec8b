"""Load an open_clip CLIP: by model name + pretrained tag/path, or from a model config JSON.

Both ways go through ``open_clip.create_model`` so real weights (``--clip ViT-B-16
--pretrained openai``), a local checkpoint (``--pretrained /path/ckpt.pt``) and the
tiny configs of the tests and the toy world share one code path.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

from clips4rt.bundle import OPENAI_MEAN, OPENAI_STD

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def load_clip(
    name: str | None = None,
    pretrained: str | None = None,
    model_config: str | Path | None = None,
    device: str | torch.device = "cpu",
):
    """Create an open_clip model in eval mode.

    Args:
        name: open_clip model name (``open_clip.list_models()``), e.g. "ViT-B-16".
        pretrained: a pretrained tag of that model ("openai", "laion2b_s34b_b88k")
            or a local checkpoint path; None = random weights.
        model_config: an open_clip-style model config JSON file (keys
            ``embed_dim``, ``vision_cfg``, ``text_cfg``); its file stem becomes
            the model name. Exclusive with ``name``. An optional ``preprocess_cfg``
            (``{"mean": [...], "std": [...]}``, as in open_clip_config.json) sets the
            image statistics when they are not OpenAI's.

    Returns:
        (model, name, mean, std): the model, the resolved name, and its
        preprocessing mean/std (0-1 RGB scale).
    """
    import open_clip

    preprocess = None
    if (name is None) == (model_config is None):
        raise ValueError("give exactly one of --clip NAME or --model-config FILE.json")
    if model_config is not None:
        path = Path(model_config)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            raise ValueError(f"{path}: an open_clip model config needs keys {sorted(missing)}")
        name = path.stem
        preprocess = cfg.pop("preprocess_cfg", None)  # as in open_clip_config.json
        if preprocess is not None and not isinstance(preprocess, dict):
            raise ValueError(f"{path}: preprocess_cfg must be an object like {{'mean': [...]}}")
        with tempfile.TemporaryDirectory() as tmp:  # open_clip reads the config from a file
            clean = Path(tmp) / path.name
            clean.write_text(json.dumps(cfg))
            open_clip.add_model_config(clean)
    elif name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower() in m.lower()][:10]
        raise ValueError(
            f"unknown open_clip model {name!r}. Similar: {close or 'none'}; "
            "see open_clip.list_models()"
        )
    if isinstance(pretrained, Path) or (pretrained and pretrained.startswith("~")):
        pretrained = str(Path(pretrained).expanduser())  # a path; a tag stays as it is
    if pretrained is not None and Path(pretrained).suffix in CHECKPOINT_SUFFIXES:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained}")
    quick = needs_quick_gelu(name, pretrained)
    try:
        with warnings.catch_warnings():  # open_clip only warns; a mismatch is an error here
            warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
            model = open_clip.create_model(
                name,
                pretrained=pretrained,
                device=device,
                force_preprocess_cfg=preprocess,
                force_quick_gelu=quick,
            )
    except UserWarning as e:
        raise ValueError(
            f"{name!r} with pretrained={pretrained!r}: {e} The weights would run with the "
            "wrong activation; use the model's -quickgelu config or another tag"
        ) from e
    except RuntimeError as e:
        raise ValueError(f"cannot create {name!r} with pretrained={pretrained!r}: {e}") from e
    model.eval()
    return (model, name, *preprocess_stats(model))


def download_weights(name: str, tag: str) -> str:
    """The local path of open_clip's pretrained weights ``name`` / ``tag``, downloaded
    into open_clip's cache first when they are not there yet."""
    import open_clip
    from open_clip import pretrained as table

    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see `clips4rt models`")
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"open_clip has no pretrained {tag!r} for {name}; its tags: {tags}")
    return table.download_pretrained(cfg)


def needs_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether weights ``pretrained`` of open_clip model ``name`` were trained with
    QuickGELU (``x * sigmoid(1.702 x)``): OpenAI's tags and others that open_clip's
    pretrained table marks so. open_clip builds its plain configs with nn.GELU and only
    warns on such a tag; a ``-quickgelu`` config or a model config JSON with
    ``"quick_gelu": true`` carries it already. A local checkpoint path says nothing of
    its activation: use the matching config name for it (e.g. ViT-B-16-quickgelu)."""
    import open_clip

    if not pretrained or Path(pretrained).suffix in CHECKPOINT_SUFFIXES:
        return False
    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def activation(model) -> str:
    """The MLP activation ("quick_gelu", "gelu", or class names) that an
    open_clip CLIP's towers were built with (recorded in bundle provenance)."""
    names = {
        type(m).__name__
        for tower in (model.visual, getattr(model, "transformer", None))
        if tower is not None
        for m in tower.modules()
        if type(m).__name__ in ("QuickGELU", "GELU")
    }
    if names == {"QuickGELU"}:
        return "quick_gelu"
    if names == {"GELU"}:
        return "gelu"
    return "+".join(sorted(names)) or "unknown"


def preprocess_stats(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std), 0-1 RGB, of an open_clip CLIP's image preprocessing (its config's
    ``preprocess_cfg``; OpenAI's when the config names none)."""
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(float(v) for v in pre.get("mean", OPENAI_MEAN))
    std = tuple(float(v) for v in pre.get("std", OPENAI_STD))
    return mean, std
