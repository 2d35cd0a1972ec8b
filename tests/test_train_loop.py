"""python -m train on the toy preset: a few steps end to end, resume, NaN stop, export."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from train.__main__ import main  # noqa: E402
from train.method.config import load_config  # noqa: E402
from train.method.loop import train  # noqa: E402

TINY = ["--toy_pool=12", "--batch=3", "--image_size=64", "--teacher_size=96", "--segments=4",
        "--log_every=1", "--ckpt_every=2", "--unknown_prototypes=2", "--unknown_refresh=1",
        "--warmup=2"]  # fmt: skip


def _cfg(tmp_path, *extra):
    return load_config("toy", [*TINY, f"--out={tmp_path}", *extra])


def test_few_steps_end_to_end(tmp_path):
    last = train(_cfg(tmp_path / "a", "--steps=4"))
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["step"] == 4 and last.name == "step_0000004.pt"
    import csv

    rows = list(csv.DictReader((tmp_path / "a" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        vals = [float(r[k]) for k in ("total", "contrastive", "lr", "images_per_s", "data_wait")]
        assert np.isfinite(vals).all() and float(r["contrastive"]) > 0
        assert float(r["images_per_s"]) > 0 and 0 <= float(r["data_wait"]) <= 1
        assert r["gpu_mem_gb"] == "" and r["val_miou"] == ""  # CPU, no --val
        assert float(r["pixel"]) == float(r["alike"]) == 0.0  # --w_pixel=0, no filter
    assert sorted(p.name for p in (tmp_path / "a").glob("step_*.pt")) == [
        "step_0000002.pt", "step_0000004.pt"]  # fmt: skip


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = torch.load(train(_cfg(tmp_path / "full", "--steps=4")), weights_only=True)
    cfg = _cfg(tmp_path / "cut", "--steps=4")
    train(cfg, stop_after=3)  # "killed" after 3 steps (checkpoint at step 3)
    resumed = torch.load(train(cfg, resume=True), weights_only=True)
    assert resumed["step"] == 4
    for k, v in full["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0, msg=k)


def test_crop_targets_with_centring_train_and_resume_exactly(tmp_path):
    """--teacher_targets=both --teacher_center=0.5: the teacher's global embeddings of
    segment crops (with its dense features) as targets, its logits centred; the centre
    is saved and restored, so a resumed run equals an uninterrupted one; the options
    enter the config hash (a run from before they existed keeps its hash)."""
    extra = ["--steps=4", "--teacher_targets=both", "--teacher_center=0.5"]
    full = torch.load(train(_cfg(tmp_path / "full", *extra)), weights_only=True)
    unknown = len(full["unknown"]["protos"])  # known + unknown prototypes (once there)
    assert full["centering"]["center"].shape == (15 + unknown,)
    cfg = _cfg(tmp_path / "cut", *extra)
    train(cfg, stop_after=3)
    resumed = torch.load(train(cfg, resume=True), weights_only=True)
    for k, v in full["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0, msg=k)
    torch.testing.assert_close(resumed["centering"]["center"], full["centering"]["center"],
                               rtol=0, atol=0)  # resume is bit-exact on the CPU  # fmt: skip
    dense = _cfg(tmp_path / "e", "--teacher_targets=dense", "--teacher_center=0")
    hashes = {c.model_hash() for c in (cfg, _cfg(tmp_path / "d"), dense)}
    assert len(hashes) == 3
    # a run from before the options existed (dense targets, no centring) keeps its hash
    import hashlib
    import json

    old = {k: getattr(dense, k) for k in dense.MODEL_FIELDS}
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert dense.model_hash() == old_hash


def test_crop_weight_moves_the_target_from_the_dense_features_to_the_crops(
    tmp_path, monkeypatch
):
    """--crop_weight with --teacher_targets=both: the segments' targets at step 1 (same
    seed, scenes and student) are the unit mean of the dense targets and the crops'
    targets times the weight: 0 gives the dense targets, a huge weight the crops'."""
    from train.method import loop

    seen = {}
    real = loop.embedding_consistency

    def spy(v, t, **kw):
        seen.setdefault("t", t.detach().clone())  # the first step's targets
        return real(v, t, **kw)

    monkeypatch.setattr(loop, "embedding_consistency", spy)

    def targets(name, *extra):
        seen.clear()
        train(_cfg(tmp_path / name, "--steps=1", "--ckpt_every=1", *extra))
        return seen["t"]

    dense = targets("dense", "--teacher_targets=dense")
    crops = targets("crops", "--teacher_targets=crops")
    assert (dense * crops).sum(-1).max() < 0.999  # the two targets differ
    both = ["--teacher_targets=both"]
    torch.testing.assert_close(targets("w0", *both, "--crop_weight=0"), dense)
    torch.testing.assert_close(targets("w2", *both, "--crop_weight=2.5"),
                               torch.nn.functional.normalize(dense + 2.5 * crops, dim=-1))
    torch.testing.assert_close(targets("w1", *both),  # the default: their plain mean
                               torch.nn.functional.normalize(dense + crops, dim=-1))
    torch.testing.assert_close(targets("wbig", *both, "--crop_weight=1e6"), crops,
                               rtol=0, atol=1e-5)  # fmt: skip


def test_resume_refuses_another_config(tmp_path):
    train(_cfg(tmp_path, "--steps=2"))
    with pytest.raises(ValueError, match="another configuration"):
        train(_cfg(tmp_path, "--steps=4", "--segments=5"), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(tmp_path / "empty", "--steps=2"), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from train.method import loop

    cfg = _cfg(tmp_path, "--steps=6")
    train(cfg, stop_after=2)
    good = torch.load(tmp_path / "step_0000002.pt", weights_only=True)
    real = loop.step_losses

    def poisoned(*a, **k):
        out = real(*a, **k)
        out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(loop, "step_losses", poisoned)
    with pytest.raises(RuntimeError, match="loss is nan at step 2.*last good checkpoint"):
        train(cfg, resume=True)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_0000002.pt"]
    after = torch.load(tmp_path / "step_0000002.pt", weights_only=True)
    for k, v in good["model"].items():
        torch.testing.assert_close(after["model"][k], v, rtol=0, atol=0)


def test_export_student_parity(tmp_path):
    from train.export import export_student

    last = train(_cfg(tmp_path, "--steps=1"))
    info, errs = export_student(last, tmp_path / "student.onnx")
    assert info.kind == "clip-s4" and info.stride == 8 and info.embed_dim == 64
    assert info.known_classes and "snow" not in info.known_classes
    assert info.provenance["steps"] == 1 and info.provenance["config_hash"]
    assert all(e <= 1e-3 for e in errs.values()), errs
    import clips4rt

    seg = clips4rt.Segmenter(tmp_path / "student.onnx")
    r = seg.run(np.zeros((96, 96, 3), np.uint8), ["sky", "grass"])
    assert r.labels.shape == (96, 96)


def test_bad_inputs(tmp_path, capsys):
    assert main(["--preset", "nope"]) == 2
    assert "preset 'nope' not found" in capsys.readouterr().err
    assert main(["--preset", "toy", "--stepz=3"]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err
    assert main(["--preset", "toy", *TINY, "--backbone=vgg", f"--out={tmp_path}/b"]) == 2
    assert "unknown backbone 'vgg'" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    assert main(["--preset", "toy", *TINY, f"--data={tmp_path}/imgs", f"--out={tmp_path}/c"]) == 2
    assert "no images under --data=" in capsys.readouterr().err
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\ncat\n")
    assert (
        main(["--preset", "toy", *TINY, f"--known_classes={classes}", f"--out={tmp_path}/d"]) == 2
    )
    assert "duplicate class names ['cat']" in capsys.readouterr().err
    classes.write_text("cat\n\ndog\n")
    assert (
        main(["--preset", "toy", *TINY, f"--known_classes={classes}", f"--out={tmp_path}/e"]) == 2
    )
    assert "empty line 2" in capsys.readouterr().err


def test_numeric_options_are_checked_before_the_teacher_loads(tmp_path, capsys, monkeypatch):
    import train.method.loop

    monkeypatch.setattr(train.method.loop, "Teacher", lambda *a: pytest.fail("teacher loaded"))
    for bad, field in (("--steps=0", "steps"), ("--steps=-5", "steps"),
                       ("--ckpt_every=0", "ckpt_every"), ("--log_every=0", "log_every"),
                       ("--batch=0", "batch"), ("--lr=nan", "lr"), ("--segments=1", "segments"),
                       ("--keep=-1", "keep")):  # fmt: skip
        assert main(["--preset", "toy", *TINY, bad, f"--out={tmp_path}/x"]) == 2, bad
        assert f"--{field}=" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("data", ["toy", "folder"])
def test_two_process_torchrun_matches_one_process(tmp_path, data):
    """gloo on CPU: 2 ranks x 2 images vs 1 process x 4 images, same seed; toy scenes, or
    a folder of images through the DataLoader, each rank decoding its own two. Losses agree
    to the printed 5 decimals (segments are gathered, so negatives span the global
    batch; random draws are made for the whole batch). Parameters after 2 AdamW steps
    agree within 1e-4: a fifth of one step's size (lr 5e-4), room for all-reduce
    summation order that Adam's normalisation can amplify on tiny gradients."""
    import subprocess
    import sys

    args = ["--preset", "toy", *TINY, "--batch=4", "--backbone=vit", "--decoder_norm=gn",
            "--steps=2"]  # fmt: skip
    if data == "folder":
        from PIL import Image

        from train.toyworld import make_scene, write_dataset

        (tmp_path / "imgs").mkdir()
        for i in range(6):
            Image.fromarray(make_scene(9, i).image).save(tmp_path / "imgs" / f"{i}.png")
        args += [f"--data={tmp_path / 'imgs'}", "--workers=1"]
        # validation at step 1 (rank 0 alone improves its best.pt between checkpoints)
        val = write_dataset(tmp_path / "val", seed=5, count=2, size=64)
        args += [f"--val={val}", "--val_every=1"]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "train", *args, f"--out={tmp_path}/ddp"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main([*args, f"--out={tmp_path}/one"]) == 0
    a = torch.load(tmp_path / "one" / "step_0000002.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "step_0000002.pt", weights_only=True)
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=1e-4, msg=k)
    torch.testing.assert_close(b["unknown"]["memory"], a["unknown"]["memory"], atol=1e-6, rtol=0)
    # unit features, gathered over ranks vs one process: ulps (measured 6e-8)
    if data == "folder":
        best = [torch.load(tmp_path / d / "best.pt", weights_only=True) for d in ("one", "ddp")]
        assert best[0]["step"] == best[1]["step"] and best[0]["val"] and best[1]["val"]
    rows = lambda d: (tmp_path / d / "metrics.csv").read_text().splitlines()[1:]  # noqa: E731
    for ra, rb in zip(rows("one"), rows("ddp")):
        np.testing.assert_allclose(
            [float(x) for x in ra.split(",")[1:5]],
            [float(x) for x in rb.split(",")[1:5]],
            atol=2e-5,
        )


def test_batch_must_split_over_processes(tmp_path, monkeypatch):
    from train.method import distributed

    monkeypatch.setattr(distributed, "setup", lambda: (0, 3, torch.device("cpu")))
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        train(_cfg(tmp_path, "--steps=1", "--batch=4"))


def test_help_lists_every_config_field(capsys):
    from dataclasses import fields

    from train.method.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert f"--{f.name}={f.default}" in out, f.name
    assert "--overwrite" in out and "checkpoints kept (0 = all)" in out


def test_student_is_trained_and_exported_with_the_teachers_statistics(tmp_path, monkeypatch):
    """A teacher whose image statistics are not OpenAI's: training normalises the views
    with them, the checkpoint records them, the bundle normalises with them."""
    import json

    import train.method.loop as loop
    from train import ASSETS
    from train.export import export_student

    mean, std = (0.3, 0.6, 0.2), (0.4, 0.2, 0.3)
    cfg = json.loads((ASSETS / "toy-teacher.json").read_text())
    cfg["preprocess_cfg"] = {"mean": list(mean), "std": list(std)}
    config = tmp_path / "toy-teacher-stats.json"
    config.write_text(json.dumps(cfg))
    seen = []
    real = loop._views

    def spy(images, boxes, jitter, cfg_, device, m, s):
        seen.append((tuple(m), tuple(s)))
        return real(images, boxes, jitter, cfg_, device, m, s)

    monkeypatch.setattr(loop, "_views", spy)
    last = train(_cfg(tmp_path / "run", "--steps=1", f"--model_config={config}"))
    assert seen and all(x == (mean, std) for x in seen)
    ckpt = torch.load(last, weights_only=True)
    assert tuple(ckpt["teacher"]["mean"]) == mean and tuple(ckpt["teacher"]["std"]) == std
    info, errs = export_student(last, tmp_path / "s.onnx")
    assert info.mean == mean and info.std == std and all(e <= 1e-3 for e in errs.values())


def test_views_normalise_with_the_given_statistics():
    from train.method.augment import AugmentConfig, jitter_params, sample_boxes
    from train.method.loop import _views

    cfg = load_config("toy", TINY)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8, generator=gen)
    aug = AugmentConfig(size=cfg.image_size)
    boxes, jit = sample_boxes(2, aug, gen), jitter_params(2, aug, gen)
    a = _views(images, boxes, jit, cfg, "cpu", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    b = _views(images, boxes, jit, cfg, "cpu", (0.1, 0.2, 0.3), (0.5, 1.0, 2.0))
    pixels_a = a * 0.25 + 0.5
    pixels_b = b * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1) + torch.tensor(
        [0.1, 0.2, 0.3]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels_a, pixels_b, atol=1e-6, rtol=0)  # values <= ~3: ulps
    # of float32 (2.4e-7 at 2; measured 3e-8)
    assert not torch.allclose(a, b)


def test_cli_errors_keep_the_traceback_of_a_bug(monkeypatch, capsys):
    """A stop that names its fix (a non-finite loss) is one line; any other RuntimeError
    is a bug (torch's device mismatch, say) and keeps its traceback for the report."""
    from train.method import loop

    def fails(exc):
        def train(cfg, **k):
            raise exc

        return train

    monkeypatch.setattr(loop, "train", fails(loop.TrainingStopped("loss is nan at step 3")))
    assert main(["--preset", "toy"]) == 1
    err = capsys.readouterr().err
    assert "error: loss is nan at step 3" in err and "Traceback" not in err
    monkeypatch.setattr(loop, "train", fails(RuntimeError("Expected all tensors on one device")))
    assert main(["--preset", "toy"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in train" in err
    assert err.rstrip().endswith("error: Expected all tensors on one device")
