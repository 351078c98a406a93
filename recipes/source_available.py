"""SA-MAP: protect a trained classifier when its source data is available.

Learns a binary mask over the frozen model so that it keeps its accuracy on the source domain and
falls to chance on the target domain; writes report.json, report.md, history.json, curves.png and
the protected model (masks baked in) to --output-dir.

    python recipes/source_available.py                                   # digits -> digits-m, small CNN
    python recipes/source_available.py --source fashion --target fashion-m
    accelerate launch --multi_gpu --num_processes 2 recipes/source_available.py --cpu
"""

from __future__ import annotations

import argparse
import sys
import time

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
from map_plugin.errors import MapPluginError
from map_plugin.models import is_known_model
from map_plugin.pipeline import check_distinct_domains, check_output_dir, default_output_dir, protect
from map_plugin.report import format_table
from map_plugin.trainer import check_compatible


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--source", default="digits", help="authorized domain (labelled)")
    data.add_argument("--target", default="digits-m", help="domain to block")
    data.add_argument(
        "--model", default="small_cnn", help="architecture of the source model trained when none is given"
    )
    data.add_argument(
        "--source-model", default=None, help="folder of a trained model (model.safetensors + config.json)"
    )
    add_mask_arguments(parser)
    add_training_arguments(parser)
    add_output_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    started = time.perf_counter()
    args = parse_args(argv)
    # Everything is validated before any work and any write.
    mask_config, train_config = mask_config_from_args(args), train_config_from_args(args)
    compress_config = compress_config_from_args(args)
    source, target = load_domain(args.source), load_domain(args.target)
    check_distinct_domains(args.source, args.target)
    if args.source_model is None and not is_known_model(args.model):
        raise ValueError(f"--model {args.model!r} is not a known architecture (small_cnn, a timm name, tv:<name>)")
    output_dir = check_output_dir(args.output_dir or default_output_dir("source_available"))

    accelerator = make_accelerator(output_dir, cpu=args.cpu)
    model, model_config = resolve_source_model(args.source_model, source, args.model, accelerator, not args.no_progress)
    check_compatible(model, source.test, source.num_classes, "--source")
    check_compatible(model, target.test, source.num_classes, "--target")

    report = protect(
        model,
        scenario="source_available",
        model_config=model_config,
        keep=source.train,
        target=target.train,
        source_test=(args.source, source.test),
        target_tests={args.target: target.test},
        mask_config=mask_config,
        train_config=train_config,
        compress_config=compress_config,
        accelerator=accelerator,
        output_dir=output_dir,
        started_at=started,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if accelerator.is_main_process:
        print(format_table(report))
        print(f"wrote {output_dir}/ (report.json, report.md, history.json, curves.png, model/)")
    return report


if __name__ == "__main__":
    try:
        main()
    except MapPluginError as e:
        sys.exit(f"error: {type(e).__name__}: {e}")
