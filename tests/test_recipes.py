"""Recipes end to end through the real launcher, and their bad-input errors (raised before any write)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from map_plugin.hub import save_model
from map_plugin.models import create_model

ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = {
    "scenario", "model", "granularity", "seed", "steps", "world_size", "source", "targets", "source_drop",
    "target_drop", "st_d", "kept_fraction", "kept_per_layer", "macs", "params", "wall_time_s", "versions", "config",
}  # fmt: skip


def _recipe(name: str):
    return runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["main"]


def _launch(args: list[str], tmp_path: Path, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--num_processes", str(processes)]
    if processes > 1:
        launcher += ["--multi_gpu", "--main_process_port", "29517"]
    return subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_model(tmp_path):
    """Save an untrained small CNN with ``num_classes`` classes and ``in_chans`` channels; returns the folder."""

    def make(num_classes: int = 10, in_chans: int = 3) -> str:
        folder = tmp_path / f"model-{num_classes}-{in_chans}"
        model = create_model("small_cnn", num_classes=num_classes, in_chans=in_chans)
        save_model(
            model,
            folder,
            {"architecture": "small_cnn", "num_classes": num_classes, "in_chans": in_chans, "img_size": 32},
        )
        return str(folder)

    return make


def test_source_available_through_accelerate_launch(tmp_path, trained_digits_model):
    out = tmp_path / "run"
    args = ["recipes/source_available.py", "--source-model", trained_digits_model[0], "--steps", "4"]
    proc = _launch(args + ["--eval-every", "2", "--output-dir", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["scenario"] == "source_available" and report["steps"] == 4 and report["world_size"] == 1
    assert report["source"]["domain"] == "digits" and report["targets"][0]["domain"] == "digits-m"
    assert report["source"]["before"] >= 0.9
    for name in ("report.md", "curves.png", "model/model.safetensors", "model/config.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history if "acc/digits" in h][-1] == 4 and any("suppress" in h for h in history)
    assert "| digits-m | target |" in proc.stdout and "ST-D" in proc.stdout


def test_two_process_run_trains_one_shared_mask(tmp_path, trained_digits_model):
    out = tmp_path / "run"
    args = ["recipes/source_available.py", "--cpu", "--source-model", trained_digits_model[0], "--steps", "10"]
    args += ["--keep-augment", "flip,shift,mixup", "--keep-adversarial", "0.03"]  # the keep copies under DDP
    args += ["--suppress-target", "4.5", "--dual-start", "0"]  # and lambda, from the level of both processes
    proc = _launch(args + ["--eval-every", "0", "--output-dir", str(out), "--no-progress"], tmp_path, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [h["keep_adversarial"] for h in history if "keep_adversarial" in h], "adversarial copies were trained on"
    lams = [h["lam"] for h in history if "lam" in h]
    assert report["lambda"]["start"] == 0.5 and report["lambda"]["end"] == lams[-1] > 0.5, (
        "a short target raises lambda"
    )
    assert proc.stdout.count("### source_available") == 1, "only the main process prints the table"


def test_exported_model_holds_zeros_where_pruned_and_reloads_strictly(tmp_path, trained_digits_model):
    from map_plugin.hub import load_model

    out = tmp_path / "run"
    report = _recipe("source_available")(
        [
            "--source-model",
            trained_digits_model[0],
            "--steps",
            "6",
            "--lr",
            "0.2",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert report["kept_fraction"] < 1.0
    protected, config = load_model(out / "model")
    original, _ = load_model(trained_digits_model[0])
    assert config["map"]["scenario"] == "source_available"
    pruned = 0
    for (name, p), q in zip(protected.named_parameters(), original.parameters(), strict=True):
        changed = p != q
        assert torch.all(p[changed] == 0), f"{name}: a changed weight is not zero"
        pruned += int(changed.sum())
    assert pruned > 0
    assert report["params"]["nonzero_after"] < report["params"]["before"]


def test_channel_granularity_exports_a_smaller_protected_model(tmp_path, trained_digits_model):
    from map_plugin.data import load_domain
    from map_plugin.hub import load_model
    from map_plugin.trainer import evaluate_accuracy, make_eval_loader

    out = tmp_path / "run"
    args = ["--source-model", trained_digits_model[0], "--granularity", "channel", "--steps", "6"]
    args += ["--structure-rounds", "2", "--macs-reduction", "0.3", "--eval-every", "3"]
    report = _recipe("source_available")(args + ["--output-dir", str(out), "--no-progress"])
    assert report["granularity"] == "channel" and report["structure"]["order"] == "compress_first"
    assert report["macs"]["after"] <= 0.7 * report["macs"]["before"]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["latency_ms"]["before"] > 0 and report["latency_ms"]["after"] > 0
    assert (out / "model" / "pruning_history.json").is_file()
    protected, config = load_model(out / "model")  # replays the pruning, loads strictly
    assert sum(p.numel() for p in protected.parameters()) == report["params"]["after"]
    target_test = load_domain("digits-m").test
    assert evaluate_accuracy(protected, make_eval_loader(target_test)) == pytest.approx(report["targets"][0]["after"])
    assert config["map"]["target_accuracy"]["digits-m"] == report["targets"][0]["after"]


@pytest.mark.parametrize(
    "args, error, match",
    [
        # domains
        (["--source", "digitz"], ValueError, "digitz"),
        (["--target", "digits"], ValueError, "same domain"),
        (["--target", "digits:inv", "--source", "digits:inv"], ValueError, "same domain"),
        # mask and training settings
        (["--threshold", "0"], ValueError, "threshold=0.0"),
        (["--threshold", "1.5"], ValueError, "threshold=1.5"),
        (["--steps", "0"], ValueError, "steps=0"),
        (["--steps", "-3"], ValueError, "steps=-3"),
        (["--model", "resnet_does_not_exist"], ValueError, "resnet_does_not_exist"),
        # structured MAP settings are checked even when --granularity is element
        (["--granularity", "channel", "--macs-reduction", "1.5"], ValueError, "macs_reduction=1.5"),
        (["--structure-rounds", "0"], ValueError, "rounds=0"),
        (["--granularity", "channel", "--resume"], ValueError, "--resume is not supported"),
    ],
)
def test_bad_arguments_raise_before_anything_is_written(tmp_path, args, error, match):
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        _recipe("source_available")(args + ["--output-dir", str(out), "--no-progress"])
    assert not out.exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        _recipe("source_available")(["--output-dir", str(out), "--no-progress"])
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    "case", ["missing", "corrupted-weights", "corrupted-config", "wrong-classes", "wrong-channels"]
)
def test_bad_source_model_is_refused_before_training(tmp_path, small_model, case):
    folder = Path(
        small_model(num_classes=7 if case == "wrong-classes" else 10, in_chans=1 if case == "wrong-channels" else 3)
    )
    if case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "corrupted-weights":
        (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    elif case == "corrupted-config":
        (folder / "config.json").write_text("{not json")
    match = {
        "missing": "does not exist",
        "corrupted-weights": "not a readable safetensors",
        "corrupted-config": "not valid JSON",
        "wrong-classes": "10 classes but the model outputs 7",
        "wrong-channels": "expects 1 input channels",
    }[case]
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        _recipe("source_available")(["--source-model", str(folder), "--output-dir", str(out), "--no-progress"])
    assert not out.exists()


@pytest.fixture
def source_behind_glass(trained_digits_model):
    """A copy of ``digits`` whose train split raises when read: the source-free path must never read it."""
    from map_plugin.data import ImageTensorDataset, load_domain, register_domain, unregister_domain

    digits_test = load_domain("digits").test

    @register_domain("digits-private", classes=tuple(str(i) for i in range(10)))
    def _build(split, img_size):
        if split == "train":
            raise RuntimeError("the real source training split was read")
        return ImageTensorDataset(digits_test.images, digits_test.labels)

    yield "digits-private"
    unregister_domain("digits-private")


def test_source_free_never_reads_the_source_training_split(tmp_path, trained_digits_model, source_behind_glass):
    out = tmp_path / "run"
    args = ["--source-model", trained_digits_model[0], "--source", source_behind_glass, "--steps", "4"]
    args += ["--synth-steps", "3", "--synth-samples", "100", "--synth-batch-size", "20"]
    report = _recipe("source_free")(args + ["--eval-every", "2", "--output-dir", str(out), "--no-progress"])
    assert report["scenario"] == "source_free" and report["source"]["domain"] == "digits-private"
    assert report["source"]["before"] >= 0.9, "the source test split was evaluated"
    assert report["synthesis"]["num_samples"] == 100
    for name in ("report.json", "report.md", "curves.png", "synthetic_samples.png", "model/model.safetensors"):
        assert (out / name).is_file(), name


def test_source_free_through_accelerate_launch(tmp_path, trained_digits_model):
    out = tmp_path / "run"
    args = ["recipes/source_free.py", "--source-model", trained_digits_model[0], "--steps", "3", "--synth-steps", "2"]
    args += ["--synth-samples", "60", "--synth-batch-size", "20", "--output-dir", str(out), "--no-progress"]
    proc = _launch(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= report.keys() and report["scenario"] == "source_free"
    assert "pseudo-source" in proc.stdout and "| digits-m | target |" in proc.stdout
    # The source-free defaults set lambda per run, from 0.2, and say where it went.
    assert report["lambda"]["start"] == 0.2 and report["lambda"]["suppress_target"] == 4.5
    assert "suppress weight lambda 0.2 ->" in (out / "report.md").read_text()
