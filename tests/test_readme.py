"""The README and the pages under docs/ hold up: no links outside the repository, no
stale repository paths, no pointers to documents a user does not have, and their cheap
`clips4rt` commands run as written (on the embedded model; commands that need the
network - a model name or URL - are tested offline in test_hub.py)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import clips4rt

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README = "\n".join(p.read_text() for p in PAGES)
NETWORK = re.compile(r"--model (ViT|https?://)|--clip |--checkpoint runs/")


def test_docs_pages_exist_and_are_linked_from_the_readme():
    top = PAGES[0].read_text()
    assert len(PAGES) >= 6
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in top, f"README does not link {page.name}"
    assert len(top.splitlines()) < 120, "the README is the first hour; details go to docs/"


def test_no_pointers_outside_the_repository():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, page.name


def test_links_stay_inside_the_repository():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve()
            assert path.is_relative_to(REPO), f"{page.name}: link outside the repository: {target}"
            assert path.exists(), f"{page.name}: broken link: {target}"


def test_repository_paths_exist():
    paths = re.findall(
        r"(?<![\w/.])((?:train|benchmarks|clips4rt|kernels|tests|\.ci)/[\w./-]*\w)", README
    )
    assert paths
    missing = sorted({p for p in paths if not (REPO / p).exists()})
    assert not missing, f"README names paths that do not exist: {missing}"


def _commands(prefix: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [ln.split("  #")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith(prefix)]


def test_cheap_cli_commands_run_as_written(tmp_path):
    model = clips4rt.default_model()
    shutil.copy(model, tmp_path / "model.onnx")  # the text graph keeps its own name
    shutil.copy(model.with_name("toy.text.onnx"), tmp_path / "toy.text.onnx")
    rng = np.random.default_rng(0)
    for name in ("img1.jpg", "img2.png", "photos/a.png", "photos/b/c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "masks").mkdir()  # `clips4rt fit-head photos/ --masks masks/`: 0 above, 1 below
    for stem in ("a", "c"):
        Image.fromarray(np.repeat([0, 1], 24)[:, None].repeat(64, 1).astype(np.uint8)).save(
            tmp_path / "masks" / f"{stem}.png"
        )
    (tmp_path / "train" / "configs").mkdir(parents=True)  # what `clips4rt export` examples name
    shutil.copy(REPO / "train/configs/tiny-vit.json", tmp_path / "train/configs/tiny-vit.json")
    cmds = [c for c in _commands("clips4rt ")
            if not c.startswith(("clips4rt video", "clips4rt serve"))  # live / a server
            and not NETWORK.search(c) and "--ray" not in c]  # fmt: skip
    assert len(cmds) >= 6 and any(c.startswith("clips4rt export") for c in cmds)
    cli = Path(sys.executable).with_name("clips4rt")
    for cmd in cmds:
        argv = shlex.split(cmd)
        argv[0] = str(cli) if cli.exists() else argv[0]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    assert (tmp_path / "out" / "img1_overlay.png").is_file()
    assert (tmp_path / "clips4rt_out" / "b" / "c_overlay.png").is_file()


def test_main_job_command_ends_in_the_demo(tmp_path):
    (main,) = [c for c in _commands("python3 -m venv") if "clips4rt demo" in c]
    assert main.endswith("clips4rt demo --out out/")
    r = subprocess.run([sys.executable, "-m", "clips4rt.cli", "demo", "--out", "out/"],
                       cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "demo_overlay.png").is_file()
