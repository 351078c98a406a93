"""Use MAP in a torch-pruning compression pipeline: pick "map" from a method table, train, prune, save.

    python docs/examples/compress_with_map.py --output-dir /tmp/map-compress
    python docs/examples/compress_with_map.py --method l1   # the same pipeline with torch-pruning's L1

It trains a small source model on ``digits`` (or loads one with ``--source-model DIR``), builds the
pruner from ``map_plugin.registry``, trains the MAP channel masks (source kept, ``digits-m``
suppressed, a budget on the kept fraction), removes channels until the MACs fall by
``--macs-reduction``, and saves the pruned model as safetensors + pruning history JSON.
"""

from __future__ import annotations

import argparse

import torch

from map_plugin.compress import meet_macs_target
from map_plugin.data import load_domain
from map_plugin.models import create_model
from map_plugin.pruner import MAPPruner, count_macs_params, load_pruned, save_pruned
from map_plugin.registry import get_pruner, list_pruners
from map_plugin.source import SourceTrainConfig, train_classifier
from map_plugin.trainer import TrainConfig, evaluate_accuracy, make_eval_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="map", choices=list_pruners())
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--source-steps", type=int, default=400, help="supervised steps of the source model")
    parser.add_argument("--steps", type=int, default=300, help="mask-training steps")
    parser.add_argument("--macs-reduction", type=float, default=0.25)
    parser.add_argument("--output-dir", default="runs/compress-with-map")
    args = parser.parse_args()

    source, target = load_domain("digits"), load_domain("digits-m")
    model = create_model(args.model, num_classes=source.num_classes, img_size=32)
    train_classifier(model, source.train, SourceTrainConfig(steps=args.source_steps), progress=False)
    example = torch.zeros(1, 3, 32, 32)
    macs_before, params_before = count_macs_params(model, example)

    # The method table: "map" is one more entry next to torch-pruning's importances.
    if args.method == "map":
        pruner = get_pruner("map", model, example)
        budget = TrainConfig(steps=args.steps, budget_weight=2.0, budget_kept=1 - args.macs_reduction, lam=0.3)
        pruner.fit(source.train, target.train, budget, progress=False)
        meet_macs_target(pruner, int(macs_before * (1 - args.macs_reduction)))
    else:
        pruner = get_pruner(args.method, model, example, pruning_ratio=args.macs_reduction / 2)
    pruner.step()
    assert not isinstance(pruner, MAPPruner) or pruner.state == "pruned"

    macs_after, params_after = count_macs_params(model, example)
    save_pruned(model, pruner, args.output_dir, {"model": args.model, "num_classes": source.num_classes})
    reloaded = load_pruned(args.output_dir)
    for name, domain in (("source", source), ("target", target)):
        print(f"{name} {domain.name}: accuracy {evaluate_accuracy(reloaded, make_eval_loader(domain.test)):.3f}")
    print(f"MACs {macs_before:,} -> {macs_after:,} ({1 - macs_after / macs_before:.1%} fewer)")
    print(f"params {params_before:,} -> {params_after:,}; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
