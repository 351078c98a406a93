"""MAPImportance: torch-pruning's importance contract on MAP masks (root length, coupling, options)."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from map_plugin.errors import ConfigError
from map_plugin.importance import MAPImportance, channel_values
from map_plugin.masks import MaskConfig, attach_masks, bake_masks, mask_parameters, masked_modules
from map_plugin.models import create_model
from map_plugin.pruner import count_macs_params, fix_attention

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

X = torch.rand(1, 3, 32, 32)


def _head(model):
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _random_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mask_parameters(model):
            p.copy_(torch.rand(p.shape, generator=g))


def _graph(model):
    return tp.DependencyGraph().build_dependency(model, X)


def _groups(graph, model):
    return list(graph.get_all_groups(ignored_layers=[_head(model)], root_module_types=[nn.Conv2d, nn.Linear]))


@pytest.mark.parametrize("name", ZOO)
def test_with_torch_pruning_base_pruner(name):
    """MAPImportance in torch-pruning's own BasePruner: graph first, then masks, snapshot, bake, step."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32).eval()
    macs_before, _ = count_macs_params(model, X)
    num_heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    importance = MAPImportance()
    pruner = tp.pruner.BasePruner(
        model,
        X,
        importance=importance,
        pruning_ratio=0.3,
        ignored_layers=[_head(model)],
        num_heads=num_heads,
        in_channel_groups={},
        out_channel_groups={},
    )
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    _random_scores(model)
    recorded = importance.snapshot(model)
    assert recorded == len(list(masked_modules(model))), name
    bake_masks(model)
    pruner.step()
    fix_attention(model, pruner.num_heads)
    out = model(torch.rand(2, 3, 32, 32))
    macs_after, _ = count_macs_params(model, X)
    assert out.shape == (2, 10), name
    assert macs_after < macs_before, f"{name}: {macs_after} MACs after, {macs_before} before"


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "tv:mobilenet_v3_small"])
def test_full_root_length_and_none_without_masks(name):
    model = create_model(name, num_classes=10, img_size=32).eval()
    graph = _graph(model)
    groups = _groups(graph, model)
    importance = MAPImportance()
    assert all(importance(g) is None for g in groups), f"{name}: a group without masks must be skipped"
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    _random_scores(model)
    for g in groups:
        imp = importance(g)
        assert imp is not None and imp.shape == (len(g[0].idxs),), f"{name}: {g[0].dep}"
        assert torch.isfinite(imp).all()


def test_residual_group_reduces_over_coupled_convs():
    model = create_model("test_resnet", num_classes=10).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    _random_scores(model)
    residual = max(_groups(graph, model), key=lambda g: sum(isinstance(d.target.module, nn.Conv2d) for d, _ in g))
    producers = [
        d.target.module
        for d, _ in residual
        if isinstance(d.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(d.handler)
    ]
    assert len(producers) >= 2, "expected a residual group with several producing convs"
    stacked = torch.stack([channel_values(m)["score"] for m in producers])
    expected = {"max": stacked.max(0).values, "min": stacked.min(0).values, "mean": stacked.mean(0)}
    expected["sum"] = stacked.sum(0)
    expected["first"] = stacked[0]
    expected["gate"] = stacked[-1]
    for reduction, want in expected.items():
        got = MAPImportance(group_reduction=reduction)(residual)
        torch.testing.assert_close(got, want, msg=f"group_reduction={reduction}")


def test_depthwise_conv_counts_in_its_group():
    model = create_model("test_efficientnet", num_classes=10).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    with torch.no_grad():
        for p in mask_parameters(model):
            p.zero_()

    def depthwise(module):
        return isinstance(module, nn.Conv2d) and module.groups > 1

    group = next(g for g in _groups(graph, model) if any(depthwise(d.target.module) for d, _ in g))
    dw = next(d.target.module for d, _ in group if depthwise(d.target.module))
    with torch.no_grad():
        dw.parametrizations.weight[0].map_scores.copy_(torch.linspace(0, 1, dw.out_channels).view(-1, 1, 1, 1))
    imp = MAPImportance()(group)
    assert imp.shape == (len(group[0].idxs),)
    torch.testing.assert_close(imp, torch.linspace(0, 1, dw.out_channels))


def test_attention_group_rooted_at_proj_reduces_qkv():
    model = create_model("test_vit", num_classes=10, img_size=32).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    attn = model.blocks[0].attn
    scores = torch.rand(attn.qkv.out_features)
    with torch.no_grad():
        attn.qkv.parametrizations.weight[0].map_scores.copy_(scores.view(-1, 1))
    group = graph.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(attn.proj.in_features)))
    imp = MAPImportance()(group)
    dim = attn.proj.in_features
    torch.testing.assert_close(imp, scores.view(3, dim).max(0).values)


def test_element_masks_reduce_per_output_channel():
    model = create_model("small_cnn", num_classes=10).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="element"))
    conv = model.features[0]
    scores = conv.parametrizations.weight[0].map_scores
    with torch.no_grad():
        scores[: conv.out_channels // 2].fill_(0.0)  # the first half of the channels: everything masked
        scores[0, 0].fill_(1.0)  # channel 0 keeps one input slice of 9 weights out of 27
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    kept = MAPImportance(measure="kept")(group)
    assert kept[0].item() == pytest.approx(9 / 27)
    assert torch.all(kept[1 : conv.out_channels // 2] == 0)
    assert torch.all(kept[conv.out_channels // 2 :] == 1)
    score = MAPImportance(measure="score")(group)
    torch.testing.assert_close(score, scores.detach().flatten(1).mean(1))


def test_snapshot_survives_bake_and_follows_pruning():
    model = create_model("small_cnn", num_classes=10).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    _random_scores(model)
    conv = model.features[0]
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    importance = MAPImportance()
    live = importance(group)
    importance.snapshot(model)
    bake_masks(model)
    torch.testing.assert_close(importance(group), live)
    importance.forget_channels(conv, [0, 1])
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, [0, 1]).prune()
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    torch.testing.assert_close(importance(group), live[2:])


def test_never_mutates_the_model():
    model = create_model("test_resnet", num_classes=10).eval()
    graph = _graph(model)
    attach_masks(model, MaskConfig(granularity="channel", include_classifier=False))
    _random_scores(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for reduction in ("max", "mean", "prod"):
        for normalizer in (None, "mean", "gaussian"):
            for g in _groups(graph, model):
                MAPImportance(group_reduction=reduction, normalizer=normalizer)(g)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("normalizer", "expected"),
    [
        # torch-pruning's normalizer names
        (None, [0.0, 1.0, 3.0]),
        ("mean", [0.0, 0.75, 2.25]),
        ("max", [0.0, 1 / 3, 1.0]),
        ("sum", [0.0, 0.25, 0.75]),
        ("standarization", [0.0, 1 / 3, 1.0]),
        # a callable
        (lambda v: v * 2, [0.0, 2.0, 6.0]),
    ],
)
def test_normalizers(normalizer, expected):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    graph = tp.DependencyGraph().build_dependency(model, torch.rand(1, 3, 4, 4))
    attach_masks(model, MaskConfig(granularity="channel", exclude=["2"]))
    with torch.no_grad():
        model[0].parametrizations.weight[0].map_scores.copy_(torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1, 1))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2])
    got = MAPImportance(normalizer=normalizer)(group)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_gaussian_normalizer_has_zero_mean():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    graph = tp.DependencyGraph().build_dependency(model, torch.rand(1, 3, 4, 4))
    attach_masks(model, MaskConfig(granularity="channel", exclude=["2"]))
    _random_scores(model)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2, 3])
    got = MAPImportance(normalizer="gaussian")(group)
    assert abs(got.mean().item()) < 1e-5 and got.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"measure": "magnitude"}, "measure='magnitude'"),
        ({"group_reduction": "median"}, "group_reduction='median'"),
        ({"group_reduction": None}, "group_reduction=None"),
        ({"normalizer": "lamp"}, "normalizer='lamp'"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MAPImportance(**kwargs)
