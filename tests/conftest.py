"""Shared fixtures: tiny random open_clip configs and bundles exported from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "train" / "configs" / "tiny-vit.json"


def has_torch() -> bool:
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def tiny_clip(tiny_config):
    pytest.importorskip("open_clip")
    import torch

    from clips4rt.export.clip_loader import load_clip

    torch.manual_seed(0)
    return load_clip(model_config=tiny_config)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, tiny_clip):
    """{mode: path} of tiny bundles for every dense mode (exported once)."""
    from clips4rt.export.dense_clip import DENSE_MODES
    from train.export import export_dense_clip

    model, name, mean, std = tiny_clip
    out = tmp_path_factory.mktemp("bundles")
    paths = {}
    for mode in DENSE_MODES:
        info, errs = export_dense_clip(
            model,
            name,
            None,
            mean,
            std,
            mode,
            out / f"{mode}.onnx",
            templates="simple",
            window=0,  # whole image: the runtime tests' reference; windows: test_window.py
            negatives=(),  # a softmax over the query alone; negatives: test_find_x.py
        )
        paths[mode] = out / f"{mode}.onnx"
        paths[mode + ".errs"] = errs
    return paths


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# Hypothesis: derandomised under CI (CI=true), so that a run is reproducible and a
# failure in CI fails again locally with the same examples (HYPOTHESIS_PROFILE=ci).
try:
    import os as _os

    from hypothesis import settings as _settings

    _settings.register_profile("ci", derandomize=True)
    _settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE")
                           or ("ci" if _os.environ.get("CI") else "default"))  # fmt: skip
except ImportError:
    pass

# Triton kernels run on the CPU through the interpreter when no GPU is present.
if not cuda_available():
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
