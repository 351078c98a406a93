"""Tests of map_plugin.synthesis: shapes, a frozen model left untouched, seeding, the cache, the no-BN rule, errors."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import nn

from map_plugin.errors import ConfigError, DomainMismatchError
from map_plugin.synthesis import (
    ConditionalGenerator,
    SynthesisConfig,
    SyntheticSet,
    default_cache_dir,
    save_sample_grid,
    synthesize_pseudo_source,
)

NUM_CLASSES, IMG = 4, 8
TINY = dict(num_samples=40, steps=6, batch_size=16, latent_dim=8, channels=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine their sync costs 3x the wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_bn_model(seed: int = 0) -> nn.Module:
    """A small BN classifier (BatchNorm2d and BatchNorm1d) whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, NUM_CLASSES),
    )
    with torch.no_grad():  # give the running statistics real values
        for _ in range(3):
            model(torch.rand(32, 3, IMG, IMG))
    return model.eval()


def _no_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)
    )


def _run(model: nn.Module, tmp_path=None, **overrides) -> SyntheticSet:
    config = SynthesisConfig(**{**TINY, **overrides})
    return synthesize_pseudo_source(
        model,
        num_classes=NUM_CLASSES,
        img_size=IMG,
        config=config,
        cache_dir=tmp_path,
        use_cache=tmp_path is not None,
        progress=False,
    )


def test_output_shapes_range_balance_and_report():
    synthetic = _run(_tiny_bn_model())
    assert synthetic.images.shape == (40, 3, IMG, IMG) and synthetic.images.dtype == torch.float32
    assert float(synthetic.images.min()) >= 0.0 and float(synthetic.images.max()) <= 1.0
    assert torch.equal(synthetic.images * 255, (synthetic.images * 255).round()), "images are 8-bit quantised"
    assert synthetic.labels.dtype == torch.int64
    assert torch.bincount(synthetic.labels, minlength=NUM_CLASSES).tolist() == [10] * NUM_CLASSES
    assert torch.equal(synthetic.labels, synthetic.labels.sort().values), "labels are sorted by class"
    report = synthetic.report
    for key in ("ce", "bn", "balance", "diversity", "total"):
        assert key in report["loss_first"] and key in report["loss_last"], key
    assert report["bn_loss_first"] == report["loss_first"]["bn"]
    assert report["bn_loss_ratio"] == pytest.approx(report["bn_loss_first"] / report["bn_loss_last"])
    assert 0.0 <= report["intended_class_accuracy"] <= 1.0 and len(report["per_class_accuracy"]) == NUM_CLASSES
    assert report["steps"] == 6 and report["wall_time_s"] >= 0 and report["cached"] is False
    assert report["bn_layers"] == 3
    json.dumps(report)  # JSON-ready
    image, label = synthetic.dataset()[0]
    assert image.shape == (3, IMG, IMG) and int(label) == 0 and len(synthetic) == 40


def test_frozen_model_is_left_exactly_as_it_was():
    model = _tiny_bn_model()
    model.train()  # a model handed over in train mode must not update its BN statistics, and must stay in train mode
    model[1].eval()  # and a mixed state is restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng_state = torch.get_rng_state()
    _run(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert tensor.dtype == after[key].dtype and torch.equal(tensor, after[key]), f"{key} changed"
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules()), "hooks were left behind"
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG was consumed"


def test_same_seed_same_images_other_seed_other_images():
    model = _tiny_bn_model()
    first, second = _run(model), _run(model)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.report["loss_last"] == second.report["loss_last"]
    assert not torch.equal(_run(model, seed=1).images, first.images)


def test_cache_hit_returns_same_tensors(tmp_path):
    model = _tiny_bn_model()
    fresh = _run(model, tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["synthetic.json", "synthetic.safetensors"]
    meta = json.loads((entries[0] / "synthetic.json").read_text())
    assert meta["config"]["steps"] == 6 and meta["report"]["cached"] is False
    cached = _run(model, tmp_path)
    assert cached.report["cached"] is True and fresh.report["cached"] is False
    assert torch.equal(cached.images, fresh.images) and torch.equal(cached.labels, fresh.labels)
    assert cached.images.dtype == torch.float32
    assert cached.report["intended_class_accuracy"] == fresh.report["intended_class_accuracy"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"steps": 7}, id="config"),
        pytest.param({"seed": 3}, id="seed"),
        pytest.param({"model_seed": 1}, id="weights"),
    ],
)
def test_cache_miss_when_model_or_config_changes(tmp_path, change):
    _run(_tiny_bn_model(), tmp_path)
    model = _tiny_bn_model(seed=change.pop("model_seed", 0))
    assert _run(model, tmp_path, **change).report["cached"] is False
    assert len(list(tmp_path.iterdir())) == 2


def test_cache_miss_when_sizes_change(tmp_path):
    model = _tiny_bn_model()
    _run(model, tmp_path)
    config = SynthesisConfig(**TINY)
    other = synthesize_pseudo_source(
        model, num_classes=NUM_CLASSES, img_size=12, config=config, cache_dir=tmp_path, progress=False
    )
    assert other.report["cached"] is False and other.images.shape[-1] == 12


def test_default_cache_dir_follows_map_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "synthetic"
    model = _tiny_bn_model()
    synthesize_pseudo_source(
        model, num_classes=NUM_CLASSES, img_size=IMG, config=SynthesisConfig(**TINY), progress=False
    )
    assert len(list((tmp_path / "synthetic").iterdir())) == 1
    monkeypatch.delenv("MAP_CACHE_DIR")
    assert default_cache_dir().parts[-3:] == (".cache", "map_plugin", "synthetic")


def test_no_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path))
    synthesize_pseudo_source(
        _tiny_bn_model(), num_classes=NUM_CLASSES, img_size=IMG, config=SynthesisConfig(**TINY), use_cache=False
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", ["synthetic.safetensors", "synthetic.json"])
def test_corrupted_cache_warns_and_regenerates(tmp_path, caplog, victim):
    model = _tiny_bn_model()
    fresh = _run(model, tmp_path)
    (entry,) = tmp_path.iterdir()
    (entry / victim).write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="map_plugin.synthesis"):
        again = _run(model, tmp_path)
    assert again.report["cached"] is False
    assert any("corrupted synthetic-set cache" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.images, fresh.images)
    assert _run(model, tmp_path).report["cached"] is True, "the regenerated entry is written back"


def test_cache_with_wrong_tensor_shapes_is_not_trusted(tmp_path, caplog):
    from map_plugin._io import save_tensors

    model = _tiny_bn_model()
    _run(model, tmp_path)
    (entry,) = tmp_path.iterdir()
    save_tensors(
        entry / "synthetic.safetensors",
        {"images": torch.zeros(3, 3, IMG, IMG, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)},
    )
    with caplog.at_level(logging.WARNING, logger="map_plugin.synthesis"):
        assert _run(model, tmp_path).report["cached"] is False
    assert any("wrong shape" in r.getMessage() for r in caplog.records)


def test_model_without_batchnorm_needs_bn_weight_zero(tmp_path, caplog):
    with pytest.raises(ConfigError, match=r"bn_weight=1\.0 needs BatchNorm.*set bn_weight=0"):
        _run(_no_bn_model(), tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing is written before the error"
    with caplog.at_level(logging.WARNING, logger="map_plugin.synthesis"):
        synthetic = _run(_no_bn_model(), bn_weight=0.0)
    assert any("no BatchNorm" in r.getMessage() for r in caplog.records)
    assert synthetic.images.shape == (40, 3, IMG, IMG)
    assert synthetic.report["bn_loss_ratio"] is None and "bn" not in synthetic.report["loss_first"]
    assert synthetic.report["bn_layers"] == 0


def test_num_samples_not_a_multiple_of_classes_is_rounded_down(caplog):
    with caplog.at_level(logging.WARNING, logger="map_plugin.synthesis"):
        synthetic = _run(_tiny_bn_model(), num_samples=42)
    assert len(synthetic) == 40 and synthetic.report["num_samples"] == 40
    assert any("not a multiple" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # integer fields
        ({"num_samples": 0}, r"num_samples=0 .*integer >= 1"),
        ({"steps": 0}, r"steps=0 .*integer >= 1"),
        ({"steps": 2.5}, r"steps=2\.5 .*integer >= 1"),
        ({"steps": True}, r"steps=True .*integer"),
        ({"batch_size": 1}, r"batch_size=1 .*integer >= 2"),
        ({"latent_dim": 0}, r"latent_dim=0 .*integer >= 1"),
        ({"channels": 1}, r"channels=1 .*integer >= 2"),
        ({"seed": -1}, r"seed=-1 .*integer >= 0"),
        # learning rate
        ({"lr": 0}, r"lr=0 .*finite number > 0"),
        ({"lr": float("nan")}, r"lr=nan .*finite number > 0"),
        ({"lr": "0.01"}, r"lr='0\.01' .*finite number > 0"),
        # loss weights
        ({"bn_weight": -1.0}, r"bn_weight=-1\.0 .*>= 0"),
        ({"balance_weight": float("inf")}, r"balance_weight=inf .*finite"),
        ({"diversity_weight": None}, r"diversity_weight=None"),
        ({"ce_weight": 0.0}, r"ce_weight=0\.0 .*> 0"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SynthesisConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"img_size": 30}, ConfigError, r"img_size=30 .*divisible by 4"),
        ({"img_size": (8, 6)}, ConfigError, r"img_size=\(8, 6\)"),
        ({"num_classes": 1}, ConfigError, r"num_classes=1 .*>= 2"),
        ({"in_chans": 0}, ConfigError, r"in_chans=0"),
        ({"config": SynthesisConfig(num_samples=3)}, ConfigError, r"num_samples=3 .*num_classes=4"),
        ({"num_classes": 5}, DomainMismatchError, r"logits of shape \[2, 5\].*got \[2, 4\]"),
        ({"in_chans": 1}, DomainMismatchError, r"failed on images of shape \[2, 1, 8, 8\]"),
        ({"config": {"steps": 3}}, TypeError, r"config must be a SynthesisConfig"),
    ],
)
def test_bad_arguments_raise_before_any_write(tmp_path, kwargs, error, match):
    args = {"num_classes": NUM_CLASSES, "img_size": IMG, "config": SynthesisConfig(**TINY), **kwargs}
    with pytest.raises(error, match=match):
        synthesize_pseudo_source(_tiny_bn_model(), cache_dir=tmp_path, progress=False, **args)
    assert list(tmp_path.iterdir()) == []


def test_not_a_module_raises():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        synthesize_pseudo_source(lambda x: x, num_classes=2, img_size=8)  # type: ignore[arg-type]


def test_generator_shapes_and_range():
    gen = ConditionalGenerator(3, (8, 12), in_chans=1, latent_dim=5, channels=8)
    with torch.no_grad():
        out = gen(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert out.shape == (4, 1, 8, 12) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError, match="img_size=10"):
        ConditionalGenerator(3, 10)


def test_sample_grid_is_a_png(tmp_path):
    synthetic = _run(_tiny_bn_model())
    path = save_sample_grid(synthetic, tmp_path / "sub" / "grid.png", per_class=5, class_names=list("abcd"))
    assert path == tmp_path / "sub" / "grid.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"], "no temp file left behind"
    grey = SyntheticSet(synthetic.images[:, :1], synthetic.labels, synthetic.report)
    assert save_sample_grid(grey, tmp_path / "grey.png").is_file()
    with pytest.raises(ConfigError, match="per_class=0"):
        save_sample_grid(synthetic, tmp_path / "x.png", per_class=0)
    with pytest.raises(ConfigError, match="class_names has 2 entries"):
        save_sample_grid(synthetic, tmp_path / "x.png", class_names=["a", "b"])


@pytest.mark.slow
def test_trained_digits_model_is_inverted_to_its_classes():
    """A small CNN trained on digits: the frozen model recognises >= 90% of the synthetic samples, BN loss falls 10x."""
    import torch.nn.functional as F

    from map_plugin.data import load_domain
    from map_plugin.models import create_model

    digits = load_domain("digits")
    x_train, y_train = (torch.stack(t) for t in zip(*((x, torch.tensor(y)) for x, y in digits.train), strict=True))
    x_test, y_test = (torch.stack(t) for t in zip(*((x, torch.tensor(y)) for x, y in digits.test), strict=True))
    model = create_model("small_cnn", num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Decay the learning rate to zero: with a constant rate the BN running statistics lag the moving weights and stop
    # describing any input (even the training set scores a BN loss of ~4), which caps the BN-loss ratio.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6 * math.ceil(len(y_train) / 64))
    for _ in range(6):
        model.train()
        for i in torch.randperm(len(y_train)).split(64):
            loss = F.cross_entropy(model(x_train[i]), y_train[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.9
    config = SynthesisConfig(num_samples=500, steps=100, batch_size=64)
    synthetic = synthesize_pseudo_source(
        model, num_classes=10, img_size=32, config=config, use_cache=False, progress=False
    )
    assert synthetic.report["intended_class_accuracy"] >= 0.9
    assert synthetic.report["bn_loss_ratio"] >= 10
    assert synthetic.report["loss_last"]["ce"] < 0.5
