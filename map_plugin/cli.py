"""Recipe plumbing: the argparse groups every recipe shares, and their translation into configs.

Recipes translate arguments into configs here, in one place, and validate everything (flags,
domain specs, model name, output folder, source-model files) before any work and any write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .compress import ORDERS, CompressConfig
from .masks import MaskConfig, list_granularities
from .trainer import KEEP_AUGMENTS, TrainConfig

__all__ = [
    "add_mask_arguments",
    "add_output_arguments",
    "add_training_arguments",
    "compress_config_from_args",
    "make_accelerator",
    "mask_config_from_args",
    "resolve_source_model",
    "train_config_from_args",
]


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mask")
    group.add_argument("--granularity", default="element", choices=list_granularities(), help="mask granularity")
    group.add_argument("--threshold", type=float, default=0.5, help="scores above it keep their weight, in (0, 1)")
    group.add_argument("--no-mask-classifier", action="store_true", help="leave the classifier's weight unmasked")
    d = CompressConfig()
    group = parser.add_argument_group("structured MAP (--granularity channel: protected AND smaller)")
    group.add_argument("--macs-reduction", type=float, default=d.macs_reduction, help="fraction of MACs to remove")
    group.add_argument("--order", default=d.order, choices=ORDERS, help="cut channels before or after protecting")
    group.add_argument("--structure-rounds", type=int, default=d.rounds, help="rounds of channel training and cuts")
    group.add_argument(
        "--structure-steps", type=int, default=d.steps, help="channel-mask steps in all (default: --steps)"
    )
    group.add_argument("--structure-lambda", type=float, default=d.lam, help="suppress weight while choosing channels")


def add_training_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """Training flags; ``defaults`` is the scenario's ``TrainConfig`` (``TrainConfig()`` when None)."""
    d = defaults or TrainConfig()
    group = parser.add_argument_group("mask training")
    group.add_argument("--steps", type=int, default=d.steps, help="mask-training steps")
    group.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate on the mask scores")
    group.add_argument(
        "--lr-decay", type=float, default=d.lr_decay, help="final fraction of steps with a linear decay to 0"
    )
    group.add_argument("--batch-size", type=int, default=d.batch_size, help="source and target samples per step")
    group.add_argument("--lambda", dest="lam", type=float, default=d.lam, help="weight of the suppress term")
    group.add_argument("--beta", type=float, default=d.beta, help="per-sample clamp of the target cross-entropy")
    group.add_argument("--temperature", type=float, default=d.temperature, help="temperature of the keep KL")
    group.add_argument(
        "--target-labels", default=d.target_labels, choices=["pseudo", "true"], help="target labels to suppress"
    )
    group.add_argument(
        "--keep-augment",
        default=",".join(d.keep_augment),
        help=f"comma-separated transforms of the keep batch, KL-only copies (some of {','.join(KEEP_AUGMENTS)})",
    )
    group.add_argument(
        "--keep-adversarial",
        type=float,
        default=d.keep_adversarial,
        help="radius (pixels in [0, 1]) of KL-only keep copies moved towards disagreement (0: off)",
    )
    group.add_argument(
        "--suppress-target",
        type=float,
        default=d.suppress_target,
        help="suppress level to reach: --lambda becomes its start, then moves per run (0: --lambda fixed)",
    )
    group.add_argument("--lambda-max", dest="lam_max", type=float, default=d.lam_max, help="upper bound of lambda")
    group.add_argument("--dual-lr", type=float, default=d.dual_lr, help="step size of the updates of lambda")
    group.add_argument(
        "--dual-start", type=float, default=d.dual_start, help="fraction of the steps before lambda first moves"
    )
    group.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N steps (curves.png)")
    group.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    group.add_argument("--seed", type=int, default=d.seed)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--output-dir", default=None, help="run folder (default runs/<scenario>-<time>)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def mask_config_from_args(args: argparse.Namespace) -> MaskConfig:
    return MaskConfig(
        granularity=args.granularity, threshold=args.threshold, include_classifier=not args.no_mask_classifier
    )


def compress_config_from_args(args: argparse.Namespace) -> CompressConfig | None:
    """The structured run's settings with ``--granularity channel``, else None (flags are still checked)."""
    config = CompressConfig(
        macs_reduction=args.macs_reduction,
        order=args.order,
        rounds=args.structure_rounds,
        steps=args.structure_steps,
        lam=args.structure_lambda,
    )
    return config if args.granularity == "channel" else None


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        lr=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.batch_size,
        lam=args.lam,
        beta=args.beta,
        temperature=args.temperature,
        target_labels=args.target_labels,
        keep_adversarial=args.keep_adversarial,
        suppress_target=args.suppress_target,
        dual_lr=args.dual_lr,
        lam_max=args.lam_max,
        dual_start=args.dual_start,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        keep_augment=tuple(a for a in args.keep_augment.split(",") if a),
        seed=args.seed,
    )


def make_accelerator(output_dir: Path, cpu: bool = False):
    """An Accelerator whose checkpoints go to ``<output_dir>/checkpoints`` (created only when saving).

    Multi-process CPU runs (``accelerate launch --multi_gpu`` without GPUs) need ``cpu=True`` to use gloo.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=True, total_limit=2)
    return Accelerator(cpu=cpu or not torch.cuda.is_available(), project_config=project)


def resolve_source_model(path: str | None, source_domain, model_name: str, accelerator, progress: bool = True):
    """Load ``path``, or the cached source model for ``source_domain`` (training it on the main process first).

    Raises:
        ArtifactError: ``path`` is missing or corrupted.
    """
    from .hub import load_model
    from .source import load_or_train_source_model

    if path is not None:
        return load_model(path)
    with accelerator.main_process_first():
        return load_or_train_source_model(source_domain, model_name, progress=progress and accelerator.is_main_process)
