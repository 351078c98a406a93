"""The mask-training loop, on Accelerate; every MAP scenario shares it.

``train_masks`` takes a model that already carries masks (``attach_masks``), a source dataset
(real, or pseudo-source) and a target dataset, and trains only the mask scores with Adam:

``L = keep(masked(x_s), original(x_s), y_s) - lam * suppress(masked(x_t), y_t) [+ budget_weight * budget]``

``original`` is the same model with its masks disabled, so no second copy is held. Batches are
drawn by a stateless sampler (a fresh permutation per epoch, seeded by ``seed`` and the epoch,
sharded by rank), so a resumed run continues with exactly the batches an uninterrupted one would see.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate
from tqdm.auto import tqdm

from .errors import ConfigError, DomainMismatchError, MaskStateError
from .losses import budget_loss, keep_loss, kept_fraction, suppress_level, suppress_loss
from .masks import is_masked, mask_parameters, masks_disabled

__all__ = [
    "KEEP_AUGMENTS",
    "SOURCE_FREE",
    "TrainConfig",
    "TrainResult",
    "augment_keep",
    "evaluate_accuracy",
    "make_eval_loader",
    "step_batches",
    "train_masks",
]

_logger = logging.getLogger(__name__)

#: Transforms ``augment_keep`` knows; ``TrainConfig.keep_augment`` combines any of them.
KEEP_AUGMENTS = ("flip", "shift", "mixup")


@dataclass
class TrainConfig:
    """Mask-training settings (defaults are this project's, see docs/method.md).

    Attributes:
        steps: optimisation steps.
        lr: Adam learning rate on the mask scores. Scores start at 1.0 and flip below 0.5, so a
            score needs about 0.5 / lr = 50 steps of consistent push to prune its weight.
        lr_decay: fraction of the run, at its end, over which the learning rate falls linearly to 0.
            With a constant rate, scores near the threshold keep flipping until the last step and
            the final mask is a random draw among them; a decay lets the mask settle.
        batch_size: source and target samples per step and per process (64 + 64).
        lam: weight of the suppress term (its starting value when ``suppress_target`` is set).
        beta: per-sample clamp of the target cross-entropy.
        temperature: temperature of the keep KL.
        ce_weight: weight of the cross-entropy on source labels (when the source is labelled).
        budget_weight: weight of the budget term (0 disables it).
        budget_kept: kept fraction the budget term pushes towards (only with ``budget_weight > 0``).
        target_labels: ``"pseudo"`` (the original model's predictions: target is unlabelled) or ``"true"``.
        source_labels: use the source labels in the keep term (False: KL only).
        eval_every: evaluate the eval datasets every this many steps (0: only before and after).
        checkpoint_every: save a resumable checkpoint every this many steps (0: never).
        keep_augment: transforms from ``KEEP_AUGMENTS`` applied, in that order, to a copy of each source batch;
            the copies join the keep term through the KL only (no labels), so the mask must also preserve the
            original's outputs around the source points, not only at them. It matters most for a small
            pseudo-source set, which covers real source images poorly. Empty: off.
        keep_adversarial: radius ``eps`` (pixel units, images in [0, 1]) of a copy of each source batch moved
            one signed-gradient step, from a random start, towards where the masked model and the original
            disagree most; the copy joins the keep term through the KL only. Synthetic keep data are
            confidently classified and far from the decision boundaries, where a mask can move real source
            images unnoticed; these copies find such points near the keep data. 0: off.
        suppress_target: a level the suppress term must reach, as a constraint, with ``lam`` its multiplier:
            from ``dual_start`` on, ``lam *= exp(dual_lr * (suppress_target - level))`` every step, where
            ``level`` is ``suppress_level`` of the target batch (the samples that the original puts in the
            class the masked model gives most are left out). A fixed ``lam`` suppresses one target too
            little and costs another's source too much; the constraint finds each run's ``lam``.
            In ``(0, beta)``; 0: ``lam`` stays fixed.
        lam_max: upper bound of ``lam`` under the constraint: a target that never reaches the level would
            otherwise raise ``lam`` until the keep term no longer counts.
        dual_lr: step size of the update of ``log lam``, per step and per unit of shortfall.
        dual_start: fraction of the run before the first update of ``lam``: the first masks flip after
            about ``0.5 / lr`` steps, and a shortfall measured before them says nothing about ``lam``.
        seed: seed of the batch sampler and of everything else random.
    """

    steps: int = 600
    lr: float = 1e-2
    lr_decay: float = 0.25
    batch_size: int = 64
    lam: float = 0.5
    beta: float = 5.0
    temperature: float = 2.0
    ce_weight: float = 1.0
    budget_weight: float = 0.0
    budget_kept: float = 1.0
    target_labels: str = "pseudo"
    source_labels: bool = True
    eval_every: int = 50
    checkpoint_every: int = 0
    keep_augment: tuple[str, ...] = ()
    keep_adversarial: float = 0.0
    suppress_target: float = 0.0
    lam_max: float = 2.0
    dual_lr: float = 0.02
    dual_start: float = 0.25
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        for name in ("eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a non-negative integer")
        for name in ("lr", "beta", "temperature", "lam_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r} must be a positive number")
        for name in ("lam", "ce_weight", "budget_weight", "keep_adversarial", "suppress_target", "dual_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value!r} must be a non-negative number")
        for name in ("lr_decay", "dual_start"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name}={value!r} must be a fraction in [0, 1]")
        if self.suppress_target and not self.suppress_target < self.beta:
            raise ConfigError(
                f"suppress_target={self.suppress_target!r} must be below beta={self.beta!r}, the most suppress can be"
            )
        if self.suppress_target and not self.lam <= self.lam_max:
            raise ConfigError(f"lam={self.lam!r} must not exceed lam_max={self.lam_max!r}")
        if self.suppress_target and self.lam == 0:
            raise ConfigError("suppress_target needs lam > 0: lam is updated by a factor and cannot leave 0")
        if not 0.0 <= self.budget_kept <= 1.0:
            raise ConfigError(f"budget_kept={self.budget_kept!r} must be a fraction in [0, 1]")
        self.keep_augment = tuple(self.keep_augment)
        unknown = [a for a in self.keep_augment if a not in KEEP_AUGMENTS]
        if unknown:
            raise ConfigError(f"keep_augment: unknown {unknown}; expected some of {list(KEEP_AUGMENTS)}")
        if self.target_labels not in ("pseudo", "true"):
            raise ConfigError(f"target_labels={self.target_labels!r}; expected 'pseudo' or 'true'")


#: Source-free settings that differ from ``TrainConfig()`` (docs/method.md, "Why these defaults"):
#: synthetic keep data hold less of the source behaviour than real data, so the run is shorter, the
#: keep term softer and extended around the keep images by copies, and the suppress weight is set
#: per run by the constraint instead of fixed.
SOURCE_FREE = {
    "steps": 400,
    "lam": 0.2,
    "temperature": 4.0,
    "keep_augment": ("flip", "shift", "mixup"),
    "keep_adversarial": 0.03,
    "suppress_target": 4.5,
}


@dataclass
class TrainResult:
    """What ``train_masks`` returns: the history of evaluations and losses, and timings."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    kept_fraction: float = 1.0
    lam: float = 0.0  # the suppress weight at the end: moved by the run when ``suppress_target`` is set


class _TrainState:
    """Step counter and history; registered with Accelerate so ``save_state`` checkpoints them."""

    def __init__(self, lam: float):
        self.step = 0
        self.lam = lam  # moves during the run when TrainConfig.suppress_target is set
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "lam": self.lam, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.history = int(state["step"]), list(state["history"])
        self.lam = float(state.get("lam", self.lam))  # checkpoints from before the constraint hold no lam


def step_batches(
    dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0
) -> Iterator:
    """Yield collated batches forever, starting at ``start_step``, from per-epoch seeded permutations.

    Each epoch's permutation depends only on ``(seed, epoch)``; rank ``r`` of ``world_size`` takes
    positions ``r::world_size`` of it. Batch ``s`` of a rank is therefore a pure function of ``s``.
    """
    n = len(dataset)
    per_rank = n // world_size
    if per_rank < 1:
        raise ConfigError(f"dataset of {n} samples is too small for {world_size} processes")
    batches_per_epoch = max(1, per_rank // batch_size) if per_rank >= batch_size else 1
    bs = min(batch_size, per_rank)
    epoch, offset = divmod(start_step, batches_per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        shard = torch.randperm(n, generator=g)[rank::world_size][:per_rank]
        for b in range(offset, batches_per_epoch):
            yield default_collate([dataset[int(i)] for i in shard[b * bs : (b + 1) * bs]])
        epoch, offset = epoch + 1, 0


def augment_keep(x: torch.Tensor, kinds: tuple[str, ...], max_shift: int = 3) -> torch.Tensor:
    """A randomly transformed copy of the image batch ``x`` ``[B, C, H, W]`` (torch's global RNG).

    ``flip``: horizontal flip of half the images; ``shift``: translation by up to ``max_shift`` pixels
    with zero fill; ``mixup``: ``m * x_i + (1 - m) * x_j`` with a random partner ``j`` and ``m ~ U(0, 1)``,
    points between source samples (and classes) where the original's soft outputs still hold.
    """
    x = x.clone()
    b = x.shape[0]
    if "flip" in kinds:
        flip = torch.rand(b, device=x.device) < 0.5
        x[flip] = x[flip].flip(-1)
    if "shift" in kinds:
        h, w = x.shape[-2:]
        padded = F.pad(x, [max_shift] * 4)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b)).tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    if "mixup" in kinds:
        m = torch.rand(b, 1, 1, 1, device=x.device)
        x = m * x + (1 - m) * x[torch.randperm(b, device=x.device)]
    return x


def adversarial_keep(model: nn.Module, x: torch.Tensor, eps: float, temperature: float) -> torch.Tensor:
    """A copy of ``x`` moved within ``eps`` (L-inf) to where the masked ``model`` departs most from the original.

    One signed-gradient ascent step on ``KL(original || masked)`` at temperature ``temperature``, from a
    uniform random start in the ``eps`` ball (at the first step the two models agree, so the gradient at
    ``x`` itself is zero), projected back into the ball. Only the input gets a gradient; the mask scores
    are untouched.
    """
    start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).requires_grad_(True)
    # Not keep_loss: it detaches the original's logits, which here depend on the input as well.
    with torch.enable_grad():
        with masks_disabled(model):
            original = model(start)
        divergence = F.kl_div(
            F.log_softmax(model(start) / temperature, 1),
            F.log_softmax(original / temperature, 1),
            log_target=True,
            reduction="batchmean",
        )
        (grad,) = torch.autograd.grad(divergence, start)
    moved = start.detach() + 1.25 * eps * grad.sign()
    return (x + (moved - x).clamp(-eps, eps)).clamp(0, 1)


def make_eval_loader(dataset: Dataset, batch_size: int = 256) -> DataLoader:
    """An ordered, non-dropping loader for evaluation."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader, accelerator=None) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (gathered over processes when ``accelerator`` is given)."""
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    for x, y in loader:
        pred = model(x).argmax(1)
        if accelerator is not None:
            pred, y = accelerator.gather_for_metrics((pred, y))
        correct += int((pred == y).sum())
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ConfigError("evaluation loader is empty")
    return correct / total


def check_compatible(model: nn.Module, dataset: Dataset, num_classes: int, argument: str) -> None:
    """Raise before any training when ``dataset``'s images or class count do not fit ``model``.

    Raises:
        DomainMismatchError: channel count, or class count, differs from the model's.
    """
    x, _ = dataset[0]
    expected = _in_chans(model)
    if x.dim() != 3 or (expected is not None and x.shape[0] != expected):
        raise DomainMismatchError(
            f"{argument}: images of shape {tuple(x.shape)}, but the model expects {expected} input channels "
            "([C, H, W] images)"
        )
    with torch.no_grad(), masks_disabled(model):
        was_training = model.training
        model.eval()
        out = model(x.unsqueeze(0))
        model.train(was_training)
    if out.shape[-1] != num_classes:
        raise DomainMismatchError(
            f"{argument}: the domain has {num_classes} classes but the model outputs {out.shape[-1]}; "
            "use a model trained on this label space"
        )


def _in_chans(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            return m.in_channels if isinstance(m, nn.Conv2d) else None
    return None


def train_masks(
    model: nn.Module,
    source: Dataset | None,
    target: Dataset,
    config: TrainConfig | None = None,
    accelerator=None,
    eval_sets: Mapping[str, Dataset] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> TrainResult:
    """Train the masks of ``model`` to keep ``source`` behaviour and suppress ``target``, in place.

    Args:
        model: a model carrying MAP masks (see ``attach_masks``).
        source: dataset of ``(image, label)``: real or pseudo-source; None trains without a keep term
            (an ablation: nothing holds the source behaviour in place).
        target: dataset of ``(image, label)``; labels are read only with ``target_labels="true"``.
        config: training settings.
        accelerator: an ``accelerate.Accelerator``; a CPU/GPU default is made when None. Give it a
            ``ProjectConfiguration(project_dir=..., automatic_checkpoint_naming=True)`` to checkpoint.
        eval_sets: named datasets evaluated before, every ``eval_every`` steps and after
            (``{"source": ..., "target": ...}``), recorded in the history as ``acc/<name>``.
        progress: show a progress bar on the main process.
        resume: continue from the newest checkpoint in the accelerator's project folder, if any.

    Returns:
        A ``TrainResult``; the masks of ``model`` hold the trained scores.

    Raises:
        MaskStateError: ``model`` carries no masks.
        ConfigError: bad ``config``, or checkpointing asked without a project folder.
    """
    from accelerate import Accelerator

    config = config or TrainConfig()
    if not is_masked(model):
        raise MaskStateError("train_masks needs a masked model; call attach_masks(model, config) first")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    project_dir = accelerator.project_configuration.project_dir
    if (config.checkpoint_every or resume) and project_dir is None:
        raise ConfigError(
            "checkpoint_every/resume need Accelerator(project_config=ProjectConfiguration(project_dir=..., "
            "automatic_checkpoint_naming=True))"
        )
    torch.manual_seed(config.seed)
    model.eval()  # BatchNorm statistics and dropout stay frozen for the whole run
    optimizer = torch.optim.Adam(mask_parameters(model), lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    eval_loaders = {k: accelerator.prepare(make_eval_loader(v)) for k, v in (eval_sets or {}).items()}
    state = _TrainState(float(config.lam))
    accelerator.register_for_checkpointing(state)
    checkpoints = os.path.join(project_dir, "checkpoints") if project_dir else None
    if resume and checkpoints and os.path.isdir(checkpoints) and os.listdir(checkpoints):
        accelerator.load_state()
        # Accelerate does not advance its checkpoint counter on load; continue after the newest one.
        newest = max(int(name.rsplit("_", 1)[-1]) for name in os.listdir(checkpoints) if name[-1].isdigit())
        accelerator.project_configuration.iteration = newest + 1
        _logger.info("resumed mask training at step %d from %s", state.step, checkpoints)

    def evaluate(step: int) -> None:
        if any(h.get("step") == step and "acc/" + k in h for h in state.history for k in eval_loaders):
            return
        row = {"step": step} | {f"acc/{k}": evaluate_accuracy(model, v, accelerator) for k, v in eval_loaders.items()}
        state.history.append(row)

    rank, world = accelerator.process_index, accelerator.num_processes
    src = step_batches(source, config.batch_size, config.seed, rank, world, state.step) if source is not None else None
    tgt = step_batches(target, config.batch_size, config.seed + 1, rank, world, state.step)
    if state.step == 0:
        evaluate(0)
    start = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=state.step,
        desc="mask training",
        disable=not (progress and accelerator.is_local_main_process),
    )
    decay_steps = round(config.lr_decay * config.steps)
    dual_from = round(config.dual_start * config.steps)
    while state.step < config.steps:
        # The rate is a pure function of the step, so a resumed run follows the same schedule.
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (config.steps - state.step) / decay_steps if decay_steps else 1.0)
        xt, yt = (t.to(accelerator.device) for t in next(tgt))
        xs, ys = (t.to(accelerator.device) for t in next(src)) if src is not None else (xt[:0], yt[:0])
        xa = augment_keep(xs, config.keep_augment) if config.keep_augment and len(xs) else xs[:0]
        n_aug = len(xa)
        if config.keep_adversarial and len(xs):
            xa = torch.cat([xa, adversarial_keep(raw, xs, config.keep_adversarial, config.temperature)])
        x = torch.cat([xs, xt, xa])
        with torch.no_grad(), masks_disabled(raw):
            original = raw(x)
        logits = model(x)
        n, m = len(xs), len(xs) + len(xt)
        if config.target_labels == "pseudo":
            yt = original[n:m].argmax(1)
        keep = logits.new_zeros(())
        if src is not None:
            keep = keep_loss(
                logits[:n], original[:n], ys if config.source_labels else None, config.temperature, config.ce_weight
            )
        if len(xa):
            keep = keep + keep_loss(logits[m:], original[m:], None, config.temperature)
        suppress = suppress_loss(logits[n:m], yt, config.beta)
        loss = keep - state.lam * suppress
        if config.budget_weight > 0:
            loss = loss + config.budget_weight * budget_loss(raw, config.budget_kept)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        level = suppress_level(logits[n:m].detach(), yt, config.beta)
        if config.suppress_target and state.step >= dual_from:
            # Every process sees its own target batch; they agree on one lam through the mean.
            level = accelerator.reduce(level, reduction="mean")
            state.lam = min(
                config.lam_max, state.lam * math.exp(config.dual_lr * (config.suppress_target - level.item()))
            )
        state.step += 1
        bar.update(1)
        if state.step % 10 == 0 or state.step == config.steps:
            bar.set_postfix(keep=f"{keep.item():.3f}", suppress=f"{suppress.item():.3f}")
            row = {
                "step": state.step,
                "keep": keep.item(),
                "suppress": suppress.item(),
                "suppress_level": level.item(),
                "lam": state.lam,
            }
            if len(xa) > n_aug:  # how far the masked model strays at the adversarial copies alone
                adversarial = keep_loss(logits[m + n_aug :].detach(), original[m + n_aug :], None, config.temperature)
                row["keep_adversarial"] = adversarial.item()
            state.history.append(row)
        if config.eval_every and state.step % config.eval_every == 0:
            evaluate(state.step)
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            accelerator.save_state()
    bar.close()
    evaluate(state.step)
    with torch.no_grad():
        kept = kept_fraction(raw).item()
    return TrainResult(
        history=state.history,
        steps=state.step,
        wall_time_s=time.perf_counter() - start,
        kept_fraction=kept,
        lam=state.lam,
    )


def config_dict(config) -> dict:
    """A config dataclass as a plain dict (for config.json and report.json)."""
    return asdict(config)
