"""SF-MAP: protect a trained classifier without its source data (the flagship recipe).

The source training data is gone or private: a pseudo-source set is synthesized by inverting the
frozen model, and the mask is trained to keep the model's behaviour on it while suppressing the
(unlabelled) target domain. Real source data is read only through its *test* split, to evaluate.
Writes report.json, report.md, history.json, curves.png, synthetic_samples.png and model/ to
--output-dir.

    accelerate launch recipes/source_free.py                      # digits model, target digits-m
    python recipes/source_free.py --source-model models/fashion --target fashion-m
    accelerate launch --multi_gpu --num_processes 2 recipes/source_free.py --cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from map_plugin.cli import (
    add_mask_arguments,
    add_output_arguments,
    add_training_arguments,
    compress_config_from_args,
    make_accelerator,
    mask_config_from_args,
    resolve_source_model,
    train_config_from_args,
)
from map_plugin.data import load_domain
from map_plugin.errors import ConfigError, MapPluginError
from map_plugin.hub import load_config
from map_plugin.pipeline import check_distinct_domains, check_output_dir, default_output_dir, protect
from map_plugin.report import format_table
from map_plugin.synthesis import SynthesisConfig, save_sample_grid, synthesize_pseudo_source
from map_plugin.trainer import SOURCE_FREE, TrainConfig, check_compatible


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--target", default="digits-m", help="domain to block (its labels are not used)")
    data.add_argument(
        "--source-model", default=None, help="folder of a trained model (default: the cached digits small CNN)"
    )
    data.add_argument(
        "--source", default=None, help="source domain, for test-split evaluation only (default: from the model)"
    )
    d = SynthesisConfig()
    synth = parser.add_argument_group("pseudo-source synthesis")
    synth.add_argument("--synth-samples", type=int, default=d.num_samples, help="size of the synthetic set")
    synth.add_argument("--synth-steps", type=int, default=d.steps, help="generator training steps")
    synth.add_argument("--synth-batch-size", type=int, default=d.batch_size)
    synth.add_argument("--synth-bn-weight", type=float, default=d.bn_weight, help="BN-statistics term weight")
    add_mask_arguments(parser)
    add_training_arguments(parser, TrainConfig(**SOURCE_FREE))
    parser.set_defaults(target_labels="pseudo")
    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    # Everything is validated before any work and any write.
    mask_config, train_config = mask_config_from_args(args), train_config_from_args(args)
    compress_config = compress_config_from_args(args)
    synth_config = SynthesisConfig(
        num_samples=args.synth_samples,
        steps=args.synth_steps,
        batch_size=args.synth_batch_size,
        bn_weight=args.synth_bn_weight,
        seed=args.seed,
    )
    source_name = args.source
    if source_name is None:
        source_name = load_config(args.source_model)["source_domain"] if args.source_model else "digits"
    source, target = load_domain(source_name), load_domain(args.target)
    check_distinct_domains(source_name, args.target)
    output_dir = check_output_dir(args.output_dir or default_output_dir("source_free"))
    if args.target_labels != "pseudo":
        raise ConfigError("--target-labels: the source-free recipe treats the target as unlabelled; use 'pseudo'")

    accelerator = make_accelerator(output_dir, cpu=args.cpu)
    progress = not args.no_progress
    model, model_config = resolve_source_model(args.source_model, source, "small_cnn", accelerator, progress)
    check_compatible(model, target.test, model_config["num_classes"], "--target")
    check_compatible(model, source.test, model_config["num_classes"], "--source")

    with accelerator.main_process_first():  # the main process synthesizes and caches; the others load the cache
        synthetic = synthesize_pseudo_source(
            model,
            num_classes=model_config["num_classes"],
            img_size=model_config["img_size"],
            in_chans=model_config["in_chans"],
            config=synth_config,
            progress=not args.no_progress and accelerator.is_main_process,
        )
    if accelerator.is_main_process:
        save_sample_grid(synthetic, Path(output_dir) / "synthetic_samples.png", class_names=source.classes)

    report = protect(
        model,
        scenario="source_free",
        model_config=model_config,
        keep=synthetic.dataset(),
        target=target.train,
        source_test=(source_name, source.test),
        target_tests={args.target: target.test},
        mask_config=mask_config,
        train_config=train_config,
        compress_config=compress_config,
        accelerator=accelerator,
        output_dir=output_dir,
        started_at=started,
        extra_report={"synthesis": synthetic.report},
        resume=args.resume,
        progress=not args.no_progress,
    )
    if accelerator.is_main_process:
        s = synthetic.report
        print(format_table(report))
        bn = f", BN loss {s['bn_loss_first']:.3g} -> {s['bn_loss_last']:.3g}" if s["bn_loss_ratio"] else ""
        cached = " (cached)" if s["cached"] else ""
        print(
            f"pseudo-source{cached}: {len(synthetic)} samples, "
            f"{100 * s['intended_class_accuracy']:.1f}% classified as intended{bn}"
        )
        print(f"wrote {output_dir}/ (report.json, report.md, history.json, curves.png, synthetic_samples.png, model/)")
    return report


if __name__ == "__main__":
    try:
        main()
    except MapPluginError as e:
        sys.exit(f"error: {type(e).__name__}: {e}")
