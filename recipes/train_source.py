"""Train a source classifier on a domain and save it (model.safetensors + config.json).

Other recipes call the same code (and reuse the cached result) when no --source-model is given.

    python recipes/train_source.py                         # small CNN on digits
    python recipes/train_source.py --domain fashion --model resnet18 --output-dir models/fashion-resnet18
"""

from __future__ import annotations

import argparse
import sys

from map_plugin.data import is_domain, load_domain
from map_plugin.errors import MapPluginError
from map_plugin.models import is_known_model
from map_plugin.pipeline import check_output_dir
from map_plugin.source import SourceTrainConfig, load_or_train_source_model
from map_plugin.trainer import evaluate_accuracy, make_eval_loader


def parse_args(argv=None) -> argparse.Namespace:
    d = SourceTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="digits", help="domain to train on")
    parser.add_argument("--model", default="small_cnn", help="small_cnn, a timm name or tv:<torchvision name>")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--also-eval", nargs="*", default=None, help="other domains to report accuracy on (default: <domain>-m)"
    )
    parser.add_argument("--output-dir", default=None, help="default: the shared source-model cache")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = SourceTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    domain = load_domain(args.domain)
    also = args.also_eval if args.also_eval is not None else [f"{args.domain}-m"] * is_domain(f"{args.domain}-m")
    others = [load_domain(name) for name in also if name != args.domain]
    if not is_known_model(args.model):
        raise ValueError(f"--model {args.model!r} is not a known architecture (small_cnn, a timm name, tv:<name>)")
    output_dir = check_output_dir(args.output_dir) if args.output_dir else None

    model, saved = load_or_train_source_model(domain, args.model, config, output_dir, progress=not args.no_progress)
    results = {args.domain: saved["source_test_accuracy"]}
    for other in others:
        if other.num_classes == domain.num_classes:
            results[other.name] = evaluate_accuracy(model, make_eval_loader(other.test))
    for name, acc in results.items():
        print(f"{args.model} trained on {args.domain}: test accuracy on {name}: {100 * acc:.1f}%")
    return results


if __name__ == "__main__":
    try:
        main()
    except MapPluginError as e:
        sys.exit(f"error: {type(e).__name__}: {e}")
