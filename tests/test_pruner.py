"""MAPPruner lifecycle over the zoo, masked == pruned, illegal transitions, save/load, the method table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp
from torch import nn
from torch.utils.data import Subset

from map_plugin.compress import CompressConfig, meet_macs_target, protect_and_compress
from map_plugin.errors import ArtifactError, ConfigError, MaskStateError, UnknownNameError
from map_plugin.masks import MASK_PARAM_NAME, MaskConfig, attach_masks, bake_masks, mask_parameters
from map_plugin.models import create_model
from map_plugin.pruner import MAPPruner, count_macs_params, load_pruned, save_pruned
from map_plugin.registry import get_pruner, is_pruner, list_pruners, register_pruner
from map_plugin.trainer import TrainConfig

pytest.importorskip("timm")

ZOO = [
    "small_cnn",
    "test_resnet",
    "test_efficientnet",
    "test_convnext",
    "test_vit",
    "mobilenetv3_small_050",
    "tv:resnet18",
    "tv:mobilenet_v3_small",
]
ROOT = Path(__file__).resolve().parents[1]
X1 = torch.zeros(1, 3, 32, 32)
TWO_STEPS = TrainConfig(steps=2, batch_size=8, lr=0.05, eval_every=0)


@pytest.fixture(scope="module")
def domains():
    """64 real images of each domain: digits (source) and digits-m (target)."""
    from map_plugin.data import load_domain

    source, target = load_domain("digits"), load_domain("digits-m")
    return Subset(source.train, range(64)), Subset(target.train, range(64))


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics (fresh ones would hide the BN offset)."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


def _set_scores(model: nn.Module, drop: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mask_parameters(model):
            p.copy_(torch.where(torch.rand(p.shape, generator=g) < drop, 0.0, 1.0))


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _plain(model: nn.Module) -> bool:
    return not any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("name", ZOO)
def test_lifecycle_attach_fit_step_save_reload(name, domains, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    macs_before, _ = count_macs_params(model, X1)
    pruner = MAPPruner(model, X1, pruning_ratio=0.3)

    scores = pruner.mask_parameters()
    assert scores and all(p.requires_grad for p in scores), f"{name}: no trainable mask scores"
    frozen = [n for n, p in model.named_parameters() if MASK_PARAM_NAME not in n and p.requires_grad]
    assert not frozen, f"{name}: weights left trainable: {frozen[:3]}"
    initial = [p.detach().clone() for p in scores]
    result = pruner.fit(*domains, TWO_STEPS, progress=False)
    assert result.steps == 2
    assert any(not torch.equal(a, p.detach()) for a, p in zip(initial, scores, strict=True)), f"{name}: no score moved"

    pruner.step()
    assert pruner.state == "pruned" and _plain(model), name
    assert not any(p.requires_grad for p in model.parameters()), f"{name}: pruning left weights trainable"
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10), name
    macs_after, _ = count_macs_params(model, X1)
    assert macs_after < macs_before, f"{name}: {macs_after} MACs after, {macs_before} before"

    save_pruned(model, pruner, tmp_path, {"model": name, "num_classes": 10, "img_size": 32})
    assert {p.name for p in tmp_path.iterdir()} >= {"model.safetensors", "pruning_history.json", "config.json"}
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        again = reloaded(x)
    assert torch.equal(again, out), f"{name}: reloaded outputs differ by {(again - out).abs().max():.3g}"


@pytest.mark.parametrize("name", ["small_cnn", "test_resnet", "test_efficientnet"])
def test_channel_masked_model_equals_pruned_model(name):
    """With the channel mask gating every producer (BN included), pruning changes nothing."""
    torch.manual_seed(0)
    model = _with_bn_statistics(create_model(name, num_classes=10))
    x = torch.rand(4, 3, 32, 32)
    macs_before, _ = count_macs_params(model, X1)
    pruner = MAPPruner(model, X1)
    _set_scores(model, drop=0.4)
    with torch.no_grad():
        masked = model(x)
    pruner.step()
    with torch.no_grad():
        pruned = model(x)
    macs_after, _ = count_macs_params(model, X1)
    assert macs_after < 0.8 * macs_before, f"{name}: {macs_after} vs {macs_before}"
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=1e-5)


def test_mask_mode_removes_exactly_the_masked_channels():
    model = _with_bn_statistics(create_model("small_cnn", num_classes=10))
    (conv0, conv1), bn0 = _convs(model)[:2], _bns(model)[0]
    width = conv0.out_channels
    pruner = MAPPruner(model, X1)
    scores = conv0.parametrizations.weight[0].map_scores
    with torch.no_grad():
        scores[[1, 5, 7]] = 0.0
    pruner.step()
    assert conv0.out_channels == width - 3
    assert bn0.num_features == width - 3 and conv1.in_channels == width - 3
    assert model.fc.out_features == 10
    assert pruner.pruning_history()[0][2] == [1, 5, 7]


def test_channel_mask_alone_leaves_batchnorm_offset():
    """Why the gates exist: a zeroed conv channel still leaves BN's beta - mean * gamma / std behind."""
    model = _with_bn_statistics(create_model("small_cnn", num_classes=10))
    conv, bn = _convs(model)[0], _bns(model)[0]
    with torch.no_grad():
        bn.bias.fill_(0.3)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    with torch.no_grad():
        conv.parametrizations.weight[0].map_scores[0] = 0.0
        bn_out = bn(conv(torch.rand(2, 3, 32, 32)))
    assert bn_out[:, 0].abs().min() > 0.1, "plain channel mask: BN output of the masked channel is not zero"
    bake_masks(model)

    pruner = MAPPruner(model, X1)
    with torch.no_grad():
        conv.parametrizations.weight[0].map_scores[0] = 0.0
        bn_out = bn(conv(torch.rand(2, 3, 32, 32)))
    assert torch.all(bn_out[:, 0] == 0), "gated channel mask: BN output of the masked channel must be zero"
    assert pruner.state == "masked"


def test_element_granularity_and_frozen_model():
    model = create_model("small_cnn", num_classes=10).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen model traces an empty graph in torch-pruning: MAPPruner must cope
    conv = _convs(model)[1]
    width = conv.out_channels
    pruner = MAPPruner(model, X1, granularity="element")
    assert len(pruner.DG.module2node) > 0
    assert conv.parametrizations.weight[0].map_scores.shape == conv.weight.shape
    assert model.fc.parametrizations.weight[0].map_scores.shape == model.fc.weight.shape  # the head is masked too
    with torch.no_grad():
        conv.parametrizations.weight[0].map_scores[[0, 2]] = 0.0
    pruner.step()
    # channels 0 and 2 of the conv are zero, but its BatchNorm still adds an offset: they must stay
    assert conv.out_channels == width
    assert torch.all(conv.weight[[0, 2]] == 0)


def test_interactive_step_and_classifier_ignored():
    model = create_model("small_cnn", num_classes=10).eval()
    conv = _convs(model)[0]
    width = conv.out_channels
    pruner = MAPPruner(model, X1, pruning_ratio=0.5)
    groups = pruner.step(interactive=True)
    count = 0
    for group in groups:
        group.prune()
        count += 1
    assert count > 0, "no group yielded"
    assert model.fc.out_features == 10
    assert conv.out_channels == width // 2
    assert pruner.state == "pruned" and not any(p.requires_grad for p in model.parameters())


def test_fit_uses_budget_to_remove_channels(domains):
    model = create_model("small_cnn", num_classes=10).eval()
    pruner = MAPPruner(model, X1)
    config = TrainConfig(steps=3, batch_size=16, lr=0.3, budget_weight=50.0, budget_kept=0.5, eval_every=0)
    pruner.fit(*domains, config, progress=False)
    macs_before, _ = count_macs_params(model, X1)
    pruner.step()
    macs_after, _ = count_macs_params(model, X1)
    assert macs_after < macs_before


# ------------------------------------------------------------------------- illegal transitions
def _masked_pruner():
    model = create_model("small_cnn", num_classes=10).eval()
    return model, MAPPruner(model, X1)


def test_pruner_on_masked_model_raises():
    model = attach_masks(create_model("small_cnn", num_classes=10))
    with pytest.raises(MaskStateError, match=r"bake_masks\(model\) / remove_masks\(model\)"):
        MAPPruner(model, X1)


def test_group_prune_with_masks_attached_raises():
    model, pruner = _masked_pruner()
    conv = _convs(model)[0]
    width = conv.out_channels
    group = pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
    with pytest.raises(MaskStateError, match=r"call pruner\.bake\(\) first"):
        group.prune()
    pruner.bake()
    group = pruner.DG.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
    group.prune()
    assert conv.out_channels == width - 1


def test_step_with_foreign_masks_raises():
    model, pruner = _masked_pruner()
    pruner.bake()
    attach_masks(model)
    with pytest.raises(MaskStateError, match=r"bake_masks\(model\) or remove_masks\(model\)"):
        pruner.step()


def test_after_bake_training_calls_raise(domains):
    model, pruner = _masked_pruner()
    pruner.step()
    with pytest.raises(MaskStateError, match="new MAPPruner"):
        pruner.fit(*domains, TWO_STEPS, progress=False)
    with pytest.raises(MaskStateError, match="new MAPPruner"):
        pruner.mask_parameters()
    with pytest.raises(MaskStateError, match="already baked"):
        pruner.bake()


def test_save_with_masks_attached_raises(tmp_path):
    model, pruner = _masked_pruner()
    with pytest.raises(MaskStateError, match=r"pruner\.step\(\)"):
        save_pruned(model, pruner, tmp_path, {"model": "small_cnn", "num_classes": 10})
    assert not any(tmp_path.iterdir()), "nothing may be written before the error"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask_config": MaskConfig(), "granularity": "element"}, ConfigError, "not both"),
        ({"pruning_ratio": 1.5}, ConfigError, "pruning_ratio=1.5"),
        ({"iterative_steps": 3}, ConfigError, "iterative_steps=3"),
        ({"granularity": "block"}, UnknownNameError, "granularity='block'"),
        ({"mask_config": {"granularity": "channel"}}, ConfigError, "mask_config must be a MaskConfig"),
        ({"train_config": {"steps": 3}}, ConfigError, "train_config must be a TrainConfig"),
    ],
)
def test_bad_pruner_options_raise(kwargs, error, match):
    model = create_model("small_cnn", num_classes=10)
    with pytest.raises(error, match=match):
        MAPPruner(model, X1, **kwargs)
    assert _plain(model), "a rejected MAPPruner must not touch the model"


# ------------------------------------------------------------------------- save / load
def test_save_load_errors(tmp_path):
    model = create_model("small_cnn", num_classes=10).eval()
    pruner = MAPPruner(model, X1, pruning_ratio=0.3)
    pruner.step()
    assert pruner.pruning_history()
    with pytest.raises(ConfigError, match="config\\['model'\\]"):
        save_pruned(model, pruner, tmp_path / "bad", {"model": "no_such_net", "num_classes": 10})
    with pytest.raises(ArtifactError, match="does not exist"):
        load_pruned(tmp_path / "missing")
    save_pruned(model, pruner, tmp_path / "ok", {"model": "small_cnn", "num_classes": 10})
    (tmp_path / "ok" / "pruning_history.json").write_text("[]")
    with pytest.raises(ArtifactError, match="does not fit"):
        load_pruned(tmp_path / "ok")


def test_pruned_protected_export_has_zeroed_weights(tmp_path):
    model = _with_bn_statistics(create_model("small_cnn", num_classes=10))
    pruner = MAPPruner(model, X1, pruning_ratio=0.25)
    _set_scores(model, drop=0.2)
    pruner.step()
    attach_masks(model, MaskConfig(granularity="element"))
    _set_scores(model, drop=0.5, seed=1)
    bake_masks(model)
    save_pruned(model, pruner, tmp_path, {"model": "small_cnn", "num_classes": 10})
    reloaded = load_pruned(tmp_path)
    zeros = sum(int((p == 0).sum()) for p in reloaded.parameters())
    assert zeros > 0.3 * sum(p.numel() for n, p in reloaded.named_parameters() if "weight" in n and p.dim() > 1)


# ------------------------------------------------------------------------- protect + compress
@pytest.mark.parametrize("lower", [False, True])
def test_meet_macs_target(lower):
    model = create_model("test_resnet", num_classes=10).eval()
    macs_before, _ = count_macs_params(model, X1)
    pruner = MAPPruner(model, X1)
    _set_scores(model, drop=0.6 if lower else 0.05)  # the masks remove too much / too little
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pruner.mask_parameters():
            p.add_(0.4 * torch.rand(p.shape, generator=g))  # distinct scores: a ranking
    budget = int(0.7 * macs_before)
    threshold = meet_macs_target(pruner, budget, lower=lower)
    assert (threshold < 0.5) if lower else (threshold > 0.5)
    pruner.step()
    macs_after, _ = count_macs_params(model, X1)
    assert 0.9 * budget <= macs_after <= budget, (macs_after, budget)


# ------------------------------------------------------------------------- protect + compress
@pytest.mark.parametrize("order", ["compress_first", "protect_first"])
def test_protect_and_compress_meets_macs_budget(order, domains, tmp_path):
    model = _with_bn_statistics(create_model("small_cnn", num_classes=10))
    model, info = protect_and_compress(
        model,
        X1,
        *domains,
        train_config=TWO_STEPS,
        compress_config=CompressConfig(macs_reduction=0.3, rounds=2, order=order),
        progress=False,
    )
    assert info["macs"]["after"] <= 0.7 * info["macs"]["before"], info["macs"]
    assert info["params"]["after"] < info["params"]["before"]
    assert info["macs_reduction"] >= 0.3 and 0.0 < info["kept_fraction"] <= 1.0
    assert _plain(model) and not any(p.requires_grad for p in model.parameters())
    save_pruned(model, info["pruning_history"], tmp_path, {"model": "small_cnn", "num_classes": 10})
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_pruned(tmp_path)(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"macs_reduction": 1.0}, "macs_reduction=1.0"),
        ({"order": "both"}, "order='both'"),
        ({"rounds": 0}, "rounds=0"),
        ({"steps": -1}, "steps=-1"),
    ],
)
def test_compress_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CompressConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_config": {"steps": 2}}, "train_config must be a TrainConfig"),
        ({"compress_config": {"rounds": 2}}, "compress_config must be a CompressConfig"),
        ({"mask_config": MaskConfig(granularity="channel")}, "the protection stage is element-wise"),
    ],
)
def test_protect_and_compress_rejects_bad_arguments(kwargs, match, domains):
    model = create_model("small_cnn", num_classes=10)
    with pytest.raises(ConfigError, match=match):
        protect_and_compress(model, X1, *domains, **kwargs)
    assert _plain(model)


# ------------------------------------------------------------------------- the method table
def test_registry_table():
    assert {"map", "l1", "magnitude", "random", "taylor", "map_importance"} <= set(list_pruners())
    assert is_pruner("map") and not is_pruner("obdc")
    with pytest.raises(UnknownNameError, match="expected one of .*'map'"):
        get_pruner("obdc", nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="already registered"):
        register_pruner("map")(lambda model, example_inputs, **kw: None)


@pytest.mark.parametrize("method", ["map", "l1", "random"])
def test_registry_builds_working_pruners(method):
    model = create_model("test_resnet", num_classes=10).eval()
    macs_before, _ = count_macs_params(model, X1)
    pruner = get_pruner(method, model, X1, pruning_ratio=0.4)
    assert isinstance(pruner, tp.pruner.BasePruner)
    pruner.step()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert count_macs_params(model, X1)[0] < macs_before
    assert model.get_classifier().out_features == 10


# ------------------------------------------------------------------------- the docs example
def test_docs_example_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = ROOT / "docs" / "examples" / "compress_with_map.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--steps", "3", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MACs" in proc.stdout
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "pruning_history.json").is_file()
    assert load_pruned(tmp_path)(torch.rand(1, 3, 32, 32)).shape == (1, 10)
