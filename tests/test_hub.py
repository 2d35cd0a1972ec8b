"""Models by name and by URL (clips4rt.hub), offline: open_clip's download is redirected
to a local random state dict of the right architecture; bundles are served by a server
on 127.0.0.1 that can cut a transfer short, ignore Range requests or serve corrupt
bytes."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import clips4rt
from clips4rt import hub
from clips4rt.errors import BundleError, DownloadError

REPO = Path(__file__).resolve().parents[1]


def _photo():
    from skimage import data

    return data.astronaut()[::4, ::4]


# ---------------------------------------------------------------------------- by name
@pytest.fixture
def tiny_named(tmp_path, monkeypatch, tiny_config):
    """open_clip model 'tiny-vit' with pretrained tag 'hubtag', downloads served from a
    local state dict; an empty CLIPS4RT_HOME."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    import open_clip.factory as factory
    import open_clip.pretrained as pretrained

    open_clip.add_model_config(tiny_config)
    torch.manual_seed(0)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip.create_model("tiny-vit").state_dict(), weights)
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny-vit", {"hubtag": {"url": "", "hf_hub": ""}})
    calls = []

    def download(*a, **k):
        calls.append(a)
        return str(weights)

    monkeypatch.setattr(factory, "download_pretrained", download)
    monkeypatch.setattr(pretrained, "download_pretrained", download)
    monkeypatch.setenv("CLIPS4RT_HOME", str(tmp_path / "home"))
    return calls


def test_a_name_is_built_once_with_the_recipe_then_loaded_from_the_cache(tiny_named, capsys):
    seg = clips4rt.Segmenter("tiny-vit/hubtag")
    err = capsys.readouterr().err
    assert "used for the first time" in err and "MB ready in" in err and "built tiny-vit" in err
    folder = hub.home() / "models" / "tiny-vit--hubtag"
    assert seg.path == folder / "model.onnx"
    info = seg.info
    recipe = hub.Recipe()
    assert info.kind == recipe.dense == "sclip" and info.provenance["pretrained"] == "hubtag"
    assert info.window == 32 and info.input_size == 48  # native windows, 1.5x native side
    assert info.provenance["weights"] == "float16"  # the recipe's fp16 weights
    r = seg.run(_photo(), ["person", "sky"])
    assert r.labels.shape == (128, 128)
    # a named model keeps its prompt embeddings in the cache home (a restart skips the
    # text graph); a bundle given by path keeps them in memory unless told otherwise
    cached = len(list((hub.home() / "text").rglob("*.npy")))
    assert cached >= 2
    by_path = clips4rt.Segmenter(seg.path)
    by_path.run(_photo(), ["cat"])
    assert len(list((hub.home() / "text").rglob("*.npy"))) == cached  # "cat" not on disk
    n = len(tiny_named)
    again = clips4rt.Segmenter("tiny-vit/hubtag")  # from the cache: no download, no build
    assert again.path == seg.path and len(tiny_named) == n
    assert "first time" not in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.text.onnx"]
    assert not [p for p in folder.parent.iterdir() if ".build-" in p.name]


def test_a_foreign_folder_under_the_name_is_never_deleted(tiny_named):
    folder = hub.home() / "models" / "tiny-vit--hubtag"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="move it away"):
        clips4rt.Segmenter("tiny-vit/hubtag")
    assert (folder / "notes.txt").read_text() == "mine"
    assert not [p for p in folder.parent.iterdir() if ".build-" in p.name]


def test_a_cached_name_loads_without_torch(tiny_named, tmp_path):
    clips4rt.Segmenter("tiny-vit/hubtag")
    code = (
        "import sys\n"
        "for m in ('torch', 'open_clip', 'onnx'):\n"
        "    sys.modules[m] = None  # importing any of them now fails\n"
        "import numpy as np, clips4rt\n"
        "seg = clips4rt.Segmenter('tiny-vit/hubtag')\n"
        "r = seg.run(np.zeros((40, 60, 3), np.uint8), ['cat', 'dog'])\n"
        "assert r.labels.shape == (40, 60)\n"
        "print('ok', seg.path)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny-vit--hubtag" in done.stdout


def test_a_name_without_the_export_extra_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import clips4rt\n"
        "try:\n"
        "    clips4rt.Segmenter('ViT-B-16/openai')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, CLIPS4RT_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'pip install "clips4rt[export]"' in done.stdout and "torch" in done.stdout
    assert not (tmp_path / "home" / "models" / "ViT-B-16--openai").exists()


def test_unknown_names_and_tags_are_clear_errors_that_leave_nothing(tiny_named):
    with pytest.raises(ValueError, match="no pretrained 'nosuch' for tiny-vit.*hubtag"):
        clips4rt.Segmenter("tiny-vit/nosuch")
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-net'"):
        clips4rt.Segmenter("no-such-net/openai")
    with pytest.raises(FileNotFoundError, match="clips4rt models"):
        clips4rt.Segmenter("missing.onnx")
    with pytest.raises(FileNotFoundError, match="model file not found: models/x.onnx"):
        clips4rt.Segmenter("models/x.onnx")  # a path, though it looks like ARCH/TAG
    models = hub.home() / "models"
    assert not [p for p in models.iterdir() if not p.name.endswith(".lock")]


def test_models_command_lists_known_and_cached(tiny_named, capsys):
    from clips4rt.cli import main

    clips4rt.Segmenter("tiny-vit/hubtag")
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-16/openai" in out and "no (built on first use)" in out
    assert "tiny-vit/hubtag" in out and str(hub.home()) in out


def test_export_command_from_the_runtime_cli(tiny_config, tmp_path, capsys):
    pytest.importorskip("open_clip")
    from clips4rt.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", "--model-config", str(tiny_config), "--dense", "clearclip",
                 "--templates", "simple", "-o", str(out)]) == 0  # fmt: skip
    assert clips4rt.Segmenter(out).info.kind == "clearclip"
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "usage: clips4rt export" in capsys.readouterr().out


def test_student_export_reads_only_checked_config_fields(tmp_path):
    pytest.importorskip("torch")
    from clips4rt.export.graphs import STUDENT_FIELDS, STUDENT_RANGES, student_config
    from train.method.config import RANGES, TrainConfig

    defaults = TrainConfig()
    assert {k: getattr(defaults, k) for k in STUDENT_FIELDS} == STUDENT_FIELDS
    assert STUDENT_RANGES == {k: RANGES[k] for k in STUDENT_FIELDS if k in RANGES}
    with pytest.raises(ValueError, match="'decoder_width' = 1000000000 is outside"):
        student_config({"config": {"decoder_width": 10**9}}, "c.pt")
    assert student_config({"config": {}}, "c.pt") == STUDENT_FIELDS
    with pytest.raises(ValueError, match="'stride' is '8', not a int"):
        student_config({"config": {"stride": "8"}}, "c.pt")
    with pytest.raises(ValueError, match="'backbone' is 3"):
        student_config({"config": {"backbone": 3}}, "c.pt")
    with pytest.raises(ValueError, match="not a mapping"):
        student_config({"config": [1]}, "c.pt")


# ----------------------------------------------------------------------------- by URL
class _Files(http.server.BaseHTTPRequestHandler):
    """GET with Range support; ``faults`` may cut the next transfer of a file after n
    bytes ('cut'), ignore Range ('norange') or flip a byte ('corrupt')."""

    root: Path
    faults: dict
    log: list

    def do_GET(self):  # noqa: N802
        path = self.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        fault = self.faults.pop(path.name, None)
        rng = self.headers.get("Range")
        self.log.append((path.name, rng))
        if fault == "corrupt":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        start = int(rng[6:].split("-")[0]) if rng and fault != "norange" else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if fault == "cut":
            body = body[: len(body) // 2]
        self.wfile.write(body)
        if fault == "cut":
            self.wfile.flush()
            self.connection.shutdown(2)

    def log_message(self, *a):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    toy = clips4rt.default_model()
    shutil.copy(toy, root / "model.onnx")
    shutil.copy(toy.with_name("toy.text.onnx"), root / "toy.text.onnx")
    handler = type("H", (_Files,), {"root": root, "faults": {}, "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CLIPS4RT_HOME", str(tmp_path / "home"))
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.onnx", handler, httpd
    httpd.shutdown()
    thread.join(10)


def _finals(url: str) -> list[str]:
    folder = hub.home() / "urls" / hashlib.sha256(url.split("#")[0].encode()).hexdigest()[:16]
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_url_bundle_downloads_once_then_works_offline(server, capsys):
    url, handler, httpd = server
    seg = clips4rt.Segmenter(url)
    assert "downloaded" in capsys.readouterr().err
    assert seg.path.read_bytes() == (handler.root / "model.onnx").read_bytes()
    ref = clips4rt.Segmenter().run(_photo(), ["sky", "grass"])
    assert np.array_equal(seg.run(_photo(), ["sky", "grass"]).labels, ref.labels)
    assert _finals(url) == [".lock", "model.onnx", "origin.txt", "toy.text.onnx"]
    httpd.shutdown()  # offline: the cache answers
    again = clips4rt.Segmenter(url)
    assert again.path == seg.path
    from clips4rt.cli import main

    assert main(["models"]) == 0
    assert url in capsys.readouterr().out


def test_a_pinned_sha256_is_checked(server):
    url, handler, _ = server
    good = hashlib.sha256((handler.root / "model.onnx").read_bytes()).hexdigest()
    assert clips4rt.Segmenter(f"{url}#sha256={good}").path.is_file()
    bad = url.replace("model.onnx", "model.onnx?x=1") + "#sha256=" + "0" * 64
    with pytest.raises(BundleError, match="is not the pinned"):
        clips4rt.Segmenter(bad)
    assert _finals(bad) == [".lock", "origin.txt"]  # nothing kept under any name
    with pytest.raises(ValueError, match="sha256=<64 hex digits>"):
        clips4rt.Segmenter(url + "#md5=abc")


def test_a_corrupt_text_graph_is_refused_and_nothing_is_left(server):
    url, handler, _ = server
    handler.faults["toy.text.onnx"] = "corrupt"
    with pytest.raises(BundleError, match="does not match the one in model.onnx"):
        clips4rt.Segmenter(url)
    assert _finals(url) == [".lock", ".model.onnx.part", "origin.txt"]  # no final names
    seg = clips4rt.Segmenter(url)  # the server is right again: completes
    assert seg.info.text_model == "toy.text.onnx"


def test_an_interrupted_download_resumes_or_restarts(server):
    url, handler, _ = server
    size = (handler.root / "model.onnx").stat().st_size
    handler.faults["model.onnx"] = "cut"
    with pytest.raises(DownloadError, match="run again to resume"):
        clips4rt.Segmenter(url)
    part = hub.home() / "urls"
    (partial,) = part.rglob(".model.onnx.part")
    assert 0 < partial.stat().st_size < size and "model.onnx" not in _finals(url)
    handler.log.clear()
    seg = clips4rt.Segmenter(url)  # resumes with a Range request
    assert handler.log[0] == ("model.onnx", f"bytes={size // 2}-")
    assert seg.path.read_bytes() == (handler.root / "model.onnx").read_bytes()
    # a server that ignores Range: the download starts over and is still whole
    shutil.rmtree(hub.home() / "urls")
    handler.faults["model.onnx"] = "cut"
    with pytest.raises(DownloadError):
        clips4rt.Segmenter(url)
    handler.faults["model.onnx"] = "norange"
    seg = clips4rt.Segmenter(url)
    assert seg.path.read_bytes() == (handler.root / "model.onnx").read_bytes()


def test_url_errors_are_clear(server, tmp_path):
    url, handler, httpd = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        clips4rt.Segmenter(url.replace("model.onnx", "none.onnx"))
    with pytest.raises(ValueError, match="must end with the image graph's file name"):
        clips4rt.Segmenter(url.replace("model.onnx", "model.bin"))
    (handler.root / "junk.onnx").write_bytes(b"not an onnx file" * 10)
    with pytest.raises(BundleError, match="not an ONNX model"):
        clips4rt.Segmenter(url.replace("model.onnx", "junk.onnx"))
    httpd.shutdown()
    with pytest.raises(DownloadError, match="works offline"):
        clips4rt.Segmenter(url.replace("model.onnx", "other.onnx"))


def test_cli_segments_with_a_url_model(server, tmp_path):
    url, _, _ = server
    from PIL import Image

    from clips4rt.cli import main

    Image.fromarray(_photo()).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--model", url, "--classes", "sky,grass",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert (tmp_path / "out" / "a_labels.png").is_file()
    meta = json.loads(json.dumps(clips4rt.Segmenter(url).info.provenance))
    assert meta  # the toy bundle's provenance survived the download
