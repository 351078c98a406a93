"""Mask training: losses, accuracies moving the right way, determinism, resume, bad configs."""

from __future__ import annotations

import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from map_plugin.errors import ConfigError, MaskStateError
from map_plugin.hub import load_model
from map_plugin.losses import budget_loss, keep_loss, kept_fraction, suppress_level, suppress_loss
from map_plugin.masks import attach_masks, binary_masks, mask_parameters, mask_state_dict
from map_plugin.trainer import (
    TrainConfig,
    adversarial_keep,
    augment_keep,
    evaluate_accuracy,
    make_eval_loader,
    step_batches,
    train_masks,
)


def test_keep_loss_is_zero_for_identical_logits_and_adds_ce_with_labels():
    logits = torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    assert keep_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    assert keep_loss(logits, logits, labels, ce_weight=0.5).item() == pytest.approx(0.5 * ce, rel=1e-5)


def test_suppress_loss_clamps_each_sample_at_beta():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0]])
    labels = torch.tensor([1, 0])  # first sample: CE = 20, clamped to 5; second: ln 2
    assert suppress_loss(logits, labels, beta=5.0).item() == pytest.approx((5.0 + 0.6931) / 2, rel=1e-3)


def test_suppress_level_leaves_out_the_samples_labelled_with_the_dominant_class():
    answers = torch.tensor([2, 2, 2, 2, 0, 1])
    logits = 20.0 * torch.nn.functional.one_hot(answers, 4).float()
    # Samples 0-1 are labelled with the dominant answer 2 and are left out; of the other four, samples 2, 3
    # and 5 are wrong (CE 20, clamped at 5) and sample 4 is right (CE about 0).
    labels = torch.tensor([2, 2, 1, 3, 0, 3])
    assert suppress_level(logits, labels, beta=5.0).item() == pytest.approx(15 / 4, rel=1e-4)
    assert suppress_loss(logits, labels, beta=5.0).item() == pytest.approx(15 / 6, rel=1e-4)
    # Nothing outside the dominant class: the plain suppress term.
    same = torch.full((6,), 2)
    assert suppress_level(logits, same).item() == pytest.approx(suppress_loss(logits, same).item())


def test_budget_term_counts_weights_and_vanishes_under_budget():
    from map_plugin.models import create_model

    model = attach_masks(create_model("small_cnn"))
    assert kept_fraction(model).item() == 1.0
    assert budget_loss(model, 0.9).item() == pytest.approx(0.1)
    assert budget_loss(model, 1.0).item() == 0.0


def test_step_batches_are_a_pure_function_of_the_step(digits):
    full = step_batches(digits.train, 32, seed=3)
    batches = [next(full) for _ in range(50)]  # crosses an epoch boundary (44 batches per epoch)
    resumed = step_batches(digits.train, 32, seed=3, start_step=47)
    assert torch.equal(next(resumed)[0], batches[47][0])
    ranks = [next(step_batches(digits.train, 32, seed=3, rank=r, world_size=2))[1] for r in (0, 1)]
    assert not torch.equal(ranks[0], ranks[1])


def test_mask_training_keeps_source_and_suppresses_target(trained_digits_model, digits, digits_m):
    model, _ = load_model(trained_digits_model[0])
    src_before = evaluate_accuracy(model, make_eval_loader(digits.test))
    tgt_before = evaluate_accuracy(model, make_eval_loader(digits_m.test))
    attach_masks(model)
    config = TrainConfig(steps=80, lr=0.05, eval_every=0)
    result = train_masks(model, digits.train, digits_m.train, config, eval_sets={"s": digits.test, "t": digits_m.test})
    src_after, tgt_after = result.history[-1]["acc/s"], result.history[-1]["acc/t"]
    assert result.history[0]["acc/s"] == pytest.approx(src_before) and result.history[0]["acc/t"] == pytest.approx(
        tgt_before
    )
    assert src_before - src_after <= 0.03, f"source fell from {src_before} to {src_after}"
    assert tgt_after <= tgt_before - 0.15, f"target only fell from {tgt_before} to {tgt_after}"
    assert result.kept_fraction < 1.0
    for fqn, mask in binary_masks(model).items():
        assert mask.dtype == torch.bool, fqn


def test_same_seed_gives_the_same_mask(trained_digits_model, digits, digits_m):
    masks = []
    for _ in range(2):
        model = attach_masks(load_model(trained_digits_model[0])[0])
        train_masks(model, digits.train, digits_m.train, TrainConfig(steps=8, lr=0.2, eval_every=0), progress=False)
        masks.append(mask_state_dict(model))
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert any(not torch.all(v > 0.5) for v in masks[0].values()), "lr 0.2 for 8 steps should prune something"


@pytest.mark.parametrize("lr_decay", [0.0, 0.5])
def test_resumed_training_equals_uninterrupted_training(tmp_path, trained_digits_model, digits, digits_m, lr_decay):
    def run(folder, resume: bool):
        accelerator = Accelerator(
            cpu=True, project_config=ProjectConfiguration(project_dir=str(folder), automatic_checkpoint_naming=True)
        )
        model = attach_masks(load_model(trained_digits_model[0])[0])
        config = TrainConfig(
            steps=8, lr=0.1, lr_decay=lr_decay, eval_every=0, checkpoint_every=4, suppress_target=4.0, dual_start=0.0
        )
        result = train_masks(model, digits.train, digits_m.train, config, accelerator, progress=False, resume=resume)
        return mask_state_dict(model), result

    straight, straight_result = run(tmp_path / "a", resume=False)
    run(tmp_path / "b", resume=False)
    # An interruption between steps 4 and 8: only the step-4 checkpoint survives.
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "checkpoint_1")
    resumed, result = run(tmp_path / "b", resume=True)
    assert result.steps == 8 and (tmp_path / "b" / "checkpoints" / "checkpoint_1").is_dir()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert result.lam == straight_result.lam and result.lam != TrainConfig().lam  # the constraint's lam resumes too


def test_lr_decay_slows_the_scores_at_the_end(trained_digits_model, digits, digits_m):
    moved = {}
    for decay in (0.0, 1.0):
        model = attach_masks(load_model(trained_digits_model[0])[0])
        config = TrainConfig(steps=10, lr=0.02, lr_decay=decay, eval_every=0)
        train_masks(model, digits.train, digits_m.train, config, progress=False)
        scores = torch.cat([v.flatten() for v in mask_state_dict(model).values()])
        moved[decay] = (1.0 - scores).abs().mean().item()
    # Adam moves each score by about lr per step: 10 * lr at a constant rate, about half with a full decay.
    assert 0.3 * moved[0.0] < moved[1.0] < 0.7 * moved[0.0], moved


def _lams(result):
    return [row["lam"] for row in result.history if "lam" in row]


@pytest.mark.parametrize("level, direction", [(4.5, "up"), (0.05, "down")])
def test_suppress_target_moves_lam_towards_the_constraint(trained_digits_model, digits, digits_m, level, direction):
    model = attach_masks(load_model(trained_digits_model[0])[0])
    config = TrainConfig(
        steps=40, lr=0.02, eval_every=0, suppress_target=level, dual_lr=0.05, dual_start=0.5, lam_max=100.0
    )
    result = train_masks(model, digits.train, digits_m.train, config, progress=False)
    lams = _lams(result)
    # Untouched before dual_start (rows at steps 10 and 20), then moved every step in one direction.
    assert lams[:2] == [config.lam, config.lam]
    moved = [b - a for a, b in zip(lams[1:-1], lams[2:], strict=True)]
    assert all(d > 0 for d in moved) if direction == "up" else all(d < 0 for d in moved), lams
    assert result.lam == lams[-1]


def test_lam_max_bounds_lam(trained_digits_model, digits, digits_m):
    model = attach_masks(load_model(trained_digits_model[0])[0])
    config = TrainConfig(steps=20, eval_every=0, suppress_target=4.5, dual_lr=0.1, dual_start=0.0, lam_max=0.8)
    result = train_masks(model, digits.train, digits_m.train, config, progress=False)
    assert max(_lams(result)) == result.lam == 0.8


def test_fixed_lam_stays_fixed(trained_digits_model, digits, digits_m):
    model = attach_masks(load_model(trained_digits_model[0])[0])
    result = train_masks(model, digits.train, digits_m.train, TrainConfig(steps=20, eval_every=0), progress=False)
    assert set(_lams(result)) == {TrainConfig().lam} and result.lam == TrainConfig().lam


def test_train_masks_refuses_an_unmasked_model(digits):
    from map_plugin.models import create_model

    with pytest.raises(MaskStateError, match="attach_masks"):
        train_masks(create_model("small_cnn"), digits.train, digits.train, TrainConfig(steps=1))


def test_checkpointing_without_a_project_folder_is_refused(digits):
    from map_plugin.models import create_model

    model = attach_masks(create_model("small_cnn"))
    with pytest.raises(ConfigError, match="ProjectConfiguration"):
        train_masks(model, digits.train, digits.train, TrainConfig(steps=1, checkpoint_every=1), Accelerator(cpu=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # counts
        ({"steps": 0}, "steps=0"),
        ({"steps": -5}, "steps=-5"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"eval_every": -1}, "eval_every=-1"),
        # rates and weights
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"beta": -1.0}, "beta=-1.0"),
        ({"lam": -0.1}, "lam=-0.1"),
        ({"budget_kept": 1.5}, "budget_kept=1.5"),
        ({"lr_decay": 1.5}, "lr_decay=1.5"),
        # choices
        ({"target_labels": "gold"}, "target_labels='gold'"),
        ({"keep_augment": ("flip", "rotate")}, "rotate"),
        ({"keep_adversarial": -0.1}, "keep_adversarial"),
        # the suppress constraint
        ({"suppress_target": 5.0}, "below beta"),
        ({"suppress_target": -1.0}, "suppress_target=-1.0"),
        ({"suppress_target": 3.0, "lam": 0.0}, "lam > 0"),
        ({"dual_start": 1.5}, "dual_start=1.5"),
        ({"dual_lr": -0.01}, "dual_lr=-0.01"),
        ({"suppress_target": 3.0, "lam": 0.5, "lam_max": 0.4}, "lam_max=0.4"),
    ],
)
def test_bad_train_config_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_augment_keep_returns_a_new_batch_in_range_and_leaves_the_input():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    before = x.clone()
    for kinds in [("flip",), ("shift",), ("mixup",), ("flip", "shift", "mixup")]:
        out = augment_keep(x, kinds)
        assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0
        assert not torch.equal(out, x), kinds
    assert torch.equal(x, before)


def test_keep_augment_trains_and_is_reproducible(trained_digits_model, digits, digits_m):
    masks = []
    for _ in range(2):
        model = attach_masks(load_model(trained_digits_model[0])[0])
        config = TrainConfig(steps=4, lr=0.2, eval_every=0, keep_augment=("flip", "shift", "mixup"))
        train_masks(model, digits.train, digits_m.train, config, progress=False)
        masks.append(mask_state_dict(model))
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def _divergence(model, x, temperature=2.0):
    """Per-batch KL(original || masked) at ``x``."""
    from map_plugin.masks import masks_disabled

    with torch.no_grad():
        with masks_disabled(model):
            original = model(x)
        return keep_loss(model(x), original, None, temperature).item()


def test_adversarial_keep_moves_within_eps_towards_disagreement(trained_digits_model, digits):
    model = attach_masks(load_model(trained_digits_model[0])[0]).eval()
    torch.manual_seed(0)
    scores = mask_parameters(model)
    with torch.no_grad():  # a partly pruned mask, so the masked model and the original disagree somewhere
        for p in scores:
            p.sub_(torch.rand_like(p) * 0.505)  # about 1% pruned
    before = [p.detach().clone() for p in scores]
    x = torch.stack([digits.test[i][0] for i in range(64)])
    moved = adversarial_keep(model, x, eps=0.03, temperature=2.0)
    assert (moved - x).abs().max().item() <= 0.03 + 1e-6 and 0.0 <= moved.min() and moved.max() <= 1.0
    noise = (x + torch.empty_like(x).uniform_(-0.03, 0.03)).clamp(0, 1)
    assert _divergence(model, moved) > 1.5 * _divergence(model, noise) > 0
    assert all(p.grad is None and torch.equal(p, b) for p, b in zip(scores, before, strict=True))


def test_keep_adversarial_trains_and_is_reproducible(trained_digits_model, digits, digits_m):
    masks = []
    for eps in (0.03, 0.03, 0.0):
        model = attach_masks(load_model(trained_digits_model[0])[0])
        config = TrainConfig(steps=4, lr=0.2, eval_every=0, keep_adversarial=eps)
        train_masks(model, digits.train, digits_m.train, config, progress=False)
        masks.append(mask_state_dict(model))
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    assert any((m < 1).any() for m in masks[0].values())
    assert not all(torch.equal(masks[0][k], masks[2][k]) for k in masks[0]), "the copies changed nothing"


@pytest.mark.parametrize(
    "settings", [{}, {"keep_augment": ("flip", "shift", "mixup"), "keep_adversarial": 0.03}], ids=["plain", "copies"]
)
def test_training_without_keep_data_runs_the_suppress_term_alone(trained_digits_model, digits_m, settings):
    # The keep-data ablation: keep copies have no keep batch to copy.
    model = attach_masks(load_model(trained_digits_model[0])[0])
    config = TrainConfig(**{**settings, "steps": 10, "lr": 0.2, "eval_every": 0})
    result = train_masks(model, None, digits_m.train, config, progress=False)
    losses = [h for h in result.history if "keep" in h]
    assert losses and all(h["keep"] == 0.0 for h in losses)
    assert result.kept_fraction < 1.0
