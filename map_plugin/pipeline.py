"""One protection run end to end, shared by every recipe: attach, train, bake, evaluate, export, report.

Recipes differ only in where the keep data comes from (real source, pseudo-source, ...); they
build that dataset and call ``protect``. With channel granularity the run is structured MAP
(``compress.protect_and_compress``): the exported model is physically smaller, and the report adds
MACs, parameters and CPU latency before and after. Everything written lands in one output folder:
``report.json``, ``report.md``, ``curves.png`` and ``model/`` (masks baked in).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .compress import CompressConfig, protect_and_compress
from .errors import ConfigError, DomainMismatchError, OutputDirError
from .hub import save_model
from .masks import MaskConfig, attach_masks, bake_masks, sparsity_stats
from .pruner import count_macs_params, save_pruned
from .report import build_report, write_report
from .trainer import TrainConfig, evaluate_accuracy, make_eval_loader, train_masks

__all__ = ["check_distinct_domains", "check_output_dir", "cpu_latency_ms", "default_output_dir", "protect"]

_logger = logging.getLogger(__name__)


def default_output_dir(scenario: str) -> Path:
    """``runs/<scenario>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs", f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` can become an output folder, without creating it.

    Raises:
        OutputDirError: ``path`` is an existing file, or its nearest existing parent is not a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {str(path)!r} is a file; give a folder path (it is created if missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputDirError(f"--output-dir {str(path)!r}: {str(parent)!r} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK):
        raise OutputDirError(f"--output-dir {str(path)!r}: {str(parent)!r} is not writable")
    return path


def check_distinct_domains(source: str, target: str) -> None:
    """Raise when source and target name the same domain (after canonicalising the specs).

    Raises:
        DomainMismatchError: they are the same.
    """
    from .data import parse_domain_spec

    if str(parse_domain_spec(source)) == str(parse_domain_spec(target)):
        raise DomainMismatchError(
            f"--source and --target are the same domain ({source!r}); protection needs a different target domain"
        )


@torch.inference_mode()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor, batch_size: int = 64, runs: int = 20) -> float:
    """Fastest wall time (ms) of ``runs`` forward passes of ``batch_size`` copies of ``example`` on the CPU.

    The minimum, not the mean: other processes on the machine can only add time to a run.
    """
    device = next(model.parameters()).device
    model = model.cpu().eval()
    batch = example.expand(batch_size, *example.shape[1:]).contiguous().cpu()
    for _ in range(3):  # warm-up: allocator, kernel selection
        model(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(batch)
        times.append(1000 * (time.perf_counter() - start))
    model.to(device)
    return min(times)


def _joined_history(stages: list[tuple[str, list[dict]]]) -> list[dict]:
    """Stage histories one after the other on a single step axis, each row tagged with its ``stage``."""
    joined, offset = [], 0
    for stage, history in stages:
        joined += [
            {**row, "step": row["step"] + offset, "stage": stage} for row in history if row["step"] or not joined
        ]
        offset = joined[-1]["step"] if joined else offset
    return joined


def protect(
    model: nn.Module,
    *,
    scenario: str,
    model_config: dict,
    keep: Dataset,
    target: Dataset,
    source_test: tuple[str, Dataset],
    target_tests: Mapping[str, Dataset],
    mask_config: MaskConfig,
    train_config: TrainConfig,
    accelerator,
    output_dir: str | os.PathLike,
    started_at: float | None = None,
    extra_report: dict | None = None,
    compress_config: CompressConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Protect ``model`` and write the run folder; returns the report.

    Args:
        model: the trained, unmasked classifier (modified in place: masks are trained and baked).
        scenario: name written in the report (``source_available``, ``source_free``, ...).
        model_config: the model's saved config (architecture, num_classes, in_chans, img_size, ...).
        keep: dataset the masked model must keep behaving on (real source or pseudo-source).
        target: dataset of the domain to suppress (its labels are used only with ``target_labels="true"``).
        source_test: ``(domain name, test split)`` of the real source domain, for evaluation only.
        target_tests: ``{domain name: test split}``; the first is the report's headline target.
        mask_config, train_config: mask and training settings.
        accelerator: the run's ``accelerate.Accelerator``.
        output_dir: the run folder (created here; written by the main process only).
        started_at: ``time.perf_counter()`` at the start of the run, so wall time includes earlier stages.
        extra_report: keys appended to ``report.json`` (synthesis report, ...).
        compress_config: with ``mask_config.granularity == "channel"``: the structured run's MACs
            budget, order and rounds (``protect_and_compress``); default ``CompressConfig()``.
        resume: continue mask training from the newest checkpoint in ``output_dir``.
        progress: progress bars on the main process.

    Returns:
        The report dict (also written as ``report.json``).

    Raises:
        DomainMismatchError: a target has the source's name.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    source_name, source_set = source_test
    if source_name in target_tests:
        raise DomainMismatchError(f"target {source_name!r} is also the source domain")
    structured = mask_config.granularity == "channel"
    if structured and resume:
        raise ConfigError("--resume is not supported with --granularity channel; start the run again")
    example = source_set[0][0].unsqueeze(0)
    macs_before, params_before = count_macs_params(model.eval(), example)
    eval_sets = {source_name: source_set, **target_tests}

    extra = dict(extra_report or {})
    if structured:
        # Channel masks decide what is cut, element masks inside what remains carry the protection.
        compress_config = compress_config or CompressConfig()
        latency_before = cpu_latency_ms(model, example)
        element = MaskConfig(threshold=mask_config.threshold, include_classifier=mask_config.include_classifier)
        model, info = protect_and_compress(
            model,
            example,
            keep,
            target,
            train_config=train_config,
            compress_config=compress_config,
            mask_config=element,
            accelerator=accelerator,
            eval_sets=eval_sets,
            progress=progress,
        )
        structure = [("channels", h) for h in info["history"]["structure"]]
        protection = [("protection", h) for h in info["history"]["protect"]]
        first_protect = compress_config.order == "protect_first"
        history = _joined_history(protection + structure if first_protect else structure + protection)
        stats = {"kept_fraction": info["kept_fraction"], "kept_per_layer": info["kept_per_layer"]}
        steps = history[-1]["step"]
        latency_after = cpu_latency_ms(model, example)
        extra["structure"] = {
            **compress_config.to_dict(),
            "channel_threshold": info["channel_threshold"],
            "macs_reduction_achieved": info["macs_reduction"],
        }
        extra["latency_ms"] = {"before": latency_before, "after": latency_after, "batch_size": 64, "device": "cpu"}
    else:
        attach_masks(model, mask_config)
        result = train_masks(model, keep, target, train_config, accelerator, eval_sets, progress, resume=resume)
        history, steps = result.history, result.steps
        stats = sparsity_stats(model)
        bake_masks(model)
        extra["mask_training_time_s"] = round(result.wall_time_s, 1)
        if train_config.suppress_target:
            extra["lambda"] = {
                "start": train_config.lam,
                "end": result.lam,
                "suppress_target": train_config.suppress_target,
            }

    before = {k: v for k, v in history[0].items() if k.startswith("acc/")}  # the trainer's step-0 evaluation
    loaders = {name: accelerator.prepare(make_eval_loader(ds)) for name, ds in eval_sets.items()}
    after = {name: evaluate_accuracy(model, loader, accelerator) for name, loader in loaders.items()}
    macs_after, params_after = count_macs_params(model, example)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())

    report = build_report(
        scenario=scenario,
        model=model_config["architecture"],
        granularity=mask_config.granularity,
        seed=train_config.seed,
        steps=steps,
        world_size=accelerator.num_processes,
        source={"domain": source_name, "before": before[f"acc/{source_name}"], "after": after[source_name]},
        targets=[{"domain": n, "before": before[f"acc/{n}"], "after": after[n]} for n in target_tests],
        kept_fraction=stats["kept_fraction"],
        kept_per_layer=stats["kept_per_layer"],
        macs={"before": macs_before, "after": macs_after},
        params={"before": params_before, "after": params_after, "nonzero_after": nonzero},
        wall_time_s=time.perf_counter() - started_at,
        config={"mask": asdict(mask_config), "train": asdict(train_config)},
        **extra,
    )
    if accelerator.is_main_process:
        output_dir = Path(output_dir)
        protected_config = {
            **{k: model_config[k] for k in ("architecture", "num_classes", "in_chans", "img_size")},
            "map": {
                "scenario": scenario,
                "source_domain": source_name,
                "target_domains": list(target_tests),
                "source_accuracy": report["source"]["after"],
                "target_accuracy": {t["domain"]: t["after"] for t in report["targets"]},
                "kept_fraction": stats["kept_fraction"],
                "config": report["config"],
            },
        }
        if structured:  # a pruned model needs its pruning history to be rebuilt
            pruned_config = {**protected_config, "model": protected_config["architecture"]}
            save_pruned(model, info["pruning_history"], output_dir / "model", pruned_config)
        else:
            save_model(model, output_dir / "model", protected_config)
        write_report(report, history, output_dir)
        _logger.info("wrote %s", output_dir)
    accelerator.wait_for_everyone()
    return report
