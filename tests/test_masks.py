"""Mask lifecycle invariants over a zoo of real architectures (style: timm test_models x PEFT TEST_CASES)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from map_plugin.errors import ConfigError, MaskStateError, NoMaskableLayersError, UnknownNameError
from map_plugin.masks import (
    MASK_PARAM_NAME,
    MaskConfig,
    attach_masks,
    bake_masks,
    binary_masks,
    is_masked,
    load_mask_state_dict,
    mask_parameters,
    mask_state_dict,
    masks_disabled,
    remove_masks,
    sparsity_stats,
)
from map_plugin.models import create_model

ZOO = ["small_cnn", "test_resnet", "test_vit", "test_efficientnet", "test_convnext"]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32).eval()
    return model


def _prune_randomly(model: nn.Module, fraction: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mask_parameters(model):
            p.copy_(torch.where(torch.rand(p.shape, generator=g) < fraction, 0.0, 1.0))


@pytest.mark.parametrize("name", ZOO)
def test_all_ones_masks_leave_outputs_unchanged(name):
    model, x = _model(name), torch.rand(4, 3, 32, 32)
    expected = model(x)
    attach_masks(model)
    assert torch.equal(model(x), expected), f"{name}: all-ones masks changed the outputs"


@pytest.mark.parametrize("name", ZOO)
def test_every_mask_score_gets_a_gradient_and_nothing_else_trains(name):
    model = _model(name)
    with torch.no_grad():  # timm zero-initialises the last norm of residual blocks, which blocks gradients
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
    attach_masks(model)
    model(torch.rand(2, 3, 32, 32)).logsumexp(1).sum().backward()
    for n, p in model.named_parameters():
        if MASK_PARAM_NAME in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {n}"
        else:
            assert not p.requires_grad, f"{name}: {n} is not frozen"


@pytest.mark.parametrize("name", ZOO)
def test_bake_gives_equal_outputs_zeros_and_original_classes(name):
    model, x = _model(name), torch.rand(4, 3, 32, 32)
    classes = {n: type(m) for n, m in model.named_modules()}
    attach_masks(model)
    _prune_randomly(model)
    masks = binary_masks(model)
    masked_out = model(x).detach()
    bake_masks(model)
    assert not is_masked(model)
    assert not any("parametrizations" in n for n, _ in model.named_parameters()), f"{name}: parametrization left"
    assert {n: type(m) for n, m in model.named_modules()} == classes, f"{name}: a module class was not restored"
    params = dict(model.named_parameters())
    for fqn, keep in masks.items():
        assert torch.all(params[fqn][~keep] == 0.0), f"{name}: {fqn} holds non-zero values where pruned"
    diff = (model(x) - masked_out).abs().max().item()
    assert diff <= 1e-6, f"{name}: baked outputs differ from masked outputs by {diff}"


def test_remove_masks_restores_the_original_weights():
    model = _model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attach_masks(model)
    _prune_randomly(model)
    remove_masks(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_masks_disabled_gives_the_original_outputs():
    model, x = _model("small_cnn"), torch.rand(4, 3, 32, 32)
    expected = model(x)
    attach_masks(model)
    _prune_randomly(model)
    with masks_disabled(model):
        assert torch.equal(model(x), expected)
    assert not torch.equal(model(x), expected)


def test_channel_granularity_has_one_score_per_output_channel():
    model = attach_masks(_model("small_cnn"), MaskConfig(granularity="channel"))
    conv = model.features[0]
    assert conv.parametrizations.weight[0].map_scores.shape == (32, 1, 1, 1)
    with torch.no_grad():
        conv.parametrizations.weight[0].map_scores[:4] = 0.0
    w = conv.weight
    assert torch.all(w[:4] == 0) and torch.all(w[4:] == conv.parametrizations.weight.original[4:])
    assert sparsity_stats(model)["kept_per_layer"]["features.0"] == pytest.approx(28 / 32)


def test_exclude_and_classifier_options():
    model = attach_masks(_model("small_cnn"), MaskConfig(include_classifier=False, exclude=["features.0"]))
    names = set(mask_state_dict(model))
    assert "fc.weight" not in names and "features.0.weight" not in names and "features.4.weight" in names


def test_mask_state_dict_round_trip_and_strictness():
    a, b = attach_masks(_model("small_cnn")), attach_masks(_model("small_cnn"))
    _prune_randomly(a)
    load_mask_state_dict(b, mask_state_dict(a))
    assert all(torch.equal(binary_masks(a)[k], binary_masks(b)[k]) for k in binary_masks(a))
    sd = mask_state_dict(a)
    sd.pop("fc.weight")
    with pytest.raises(MaskStateError, match="missing=\\['fc.weight'\\]"):
        load_mask_state_dict(b, sd)
    bad = mask_state_dict(a)
    bad["fc.weight"] = torch.ones(3)
    with pytest.raises(ConfigError, match="fc.weight"):
        load_mask_state_dict(b, bad)


def test_sparsity_stats_counts_pruned_weights():
    model = attach_masks(_model("small_cnn"))
    assert sparsity_stats(model)["kept_fraction"] == 1.0
    with torch.no_grad():
        model.fc.parametrizations.weight[0].map_scores.zero_()
    stats = sparsity_stats(model)
    assert stats["kept_per_layer"]["fc"] == 0.0
    assert stats["kept_fraction"] == pytest.approx(1 - 1280 / stats["masked_weights"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # bad binarization settings
        ({"threshold": 0.0}, ConfigError, "threshold=0.0"),
        ({"threshold": 1.0}, ConfigError, "threshold=1.0"),
        ({"threshold": 0.5, "init_score": 0.4}, ConfigError, "init_score"),
        # unknown names
        ({"granularity": "kernel"}, UnknownNameError, "granularity='kernel'.*element"),
        ({"layer_types": []}, ConfigError, "layer_types"),
    ],
)
def test_bad_mask_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaskConfig(**kwargs)


def test_illegal_transitions_raise_typed_errors():
    model = attach_masks(_model("small_cnn"))
    with pytest.raises(MaskStateError, match="already carries"):
        attach_masks(model)
    bake_masks(model)
    with pytest.raises(MaskStateError, match="attach_masks"):
        bake_masks(model)
    with pytest.raises(NoMaskableLayersError):
        attach_masks(nn.Sequential(nn.ReLU()))
