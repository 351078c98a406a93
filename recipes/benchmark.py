"""Benchmarks whose tables live in docs/results.md, each written with the JSON it was made from.

    python recipes/benchmark.py --suite keep-data     # SF ablation: pseudo-source vs no keep data vs real source
    python recipes/benchmark.py --suite speed         # mask-training step vs plain fine-tuning step (ratio)

Each suite writes docs/results/<suite>.json and docs/results/<suite>.md (the table); docs/results.md
includes those tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from map_plugin._io import write_json, write_text
from map_plugin.data import load_domain
from map_plugin.masks import attach_masks, mask_parameters
from map_plugin.report import versions
from map_plugin.source import load_or_train_source_model
from map_plugin.synthesis import synthesize_pseudo_source
from map_plugin.trainer import SOURCE_FREE, TrainConfig, evaluate_accuracy, make_eval_loader, step_batches, train_masks


def keep_data(args) -> tuple[dict, str]:
    """Same model, target and budget (the source-free settings); only the keep data changes."""
    source, target = load_domain(args.source), load_domain(args.target)
    base, config = load_or_train_source_model(source, args.model)
    synthetic = synthesize_pseudo_source(base, num_classes=source.num_classes, img_size=source.img_size)
    evals = {"source": make_eval_loader(source.test), "target": make_eval_loader(target.test)}
    before = {k: evaluate_accuracy(base, v) for k, v in evals.items()}
    train = TrainConfig(**{**SOURCE_FREE, "steps": args.steps}, eval_every=0, seed=args.seed)
    rows = []
    for name, keep in (
        ("pseudo-source (SF-MAP)", synthetic.dataset()),
        ("none", None),
        ("real source (SA-MAP)", source.train),
    ):
        model = attach_masks(load_or_train_source_model(source, args.model)[0])
        result = train_masks(model, keep, target.train, train, progress=False)
        after = {k: evaluate_accuracy(model, v) for k, v in evals.items()}
        rows.append({"keep_data": name, "before": before, "after": after, "kept_fraction": result.kept_fraction,
                     "mask_training_time_s": round(result.wall_time_s, 1)})  # fmt: skip
    title = f"Keep-data ablation: {args.model} trained on {args.source}, target {args.target}, {args.steps} steps"
    table = [
        f"{title}, seed {args.seed}. Before protection: source {100 * before['source']:.1f}%, "
        f"target {100 * before['target']:.1f}%.",
        "",
        "| keep data | source after | source drop (pt) | target after | weights kept |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        drop = 100 * (r["before"]["source"] - r["after"]["source"])
        table.append(f"| {r['keep_data']} | {100 * r['after']['source']:.1f}% | {drop:.1f} | "
                     f"{100 * r['after']['target']:.1f}% | {100 * r['kept_fraction']:.1f}% |")  # fmt: skip
    return {"rows": rows, "synthesis": synthetic.report, "source_model": config}, "\n".join(table) + "\n"


def speed(args) -> tuple[dict, str]:
    """Seconds per step of mask training vs plain fine-tuning of the same model, same batches (64 + 64)."""
    source, target = load_domain(args.source), load_domain(args.target)
    batches = step_batches(source.train, 128, args.seed)
    data = [next(batches) for _ in range(args.steps)]
    model = load_or_train_source_model(source, args.model)[0].train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def finetune_step(x, y):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for x, y in data[:3]:
        finetune_step(x, y)
    start = time.perf_counter()
    for x, y in data:
        finetune_step(x, y)
    finetune = (time.perf_counter() - start) / len(data)
    masked = attach_masks(load_or_train_source_model(source, args.model)[0])
    result = train_masks(
        masked, source.train, target.train, TrainConfig(steps=args.steps, eval_every=0), progress=False
    )
    mask = result.wall_time_s / result.steps
    n_scores = sum(p.numel() for p in mask_parameters(masked))
    out = {"finetune_step_s": finetune, "mask_step_s": mask, "ratio": mask / finetune, "mask_scores": n_scores,
           "threads": torch.get_num_threads()}  # fmt: skip
    table = (
        f"| step (batch 128, {args.model}) | seconds | ratio |\n|---|---|---|\n"
        f"| plain fine-tuning | {finetune:.3f} | 1.00 |\n"
        f"| MAP mask training | {mask:.3f} | {mask / finetune:.2f} |\n"
    )
    return out, table


SUITES = {"keep-data": keep_data, "speed": speed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, choices=sorted(SUITES))
    parser.add_argument("--source", default="digits")
    parser.add_argument("--target", default="digits-m")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--steps", type=int, default=None, help="default: source-free's for keep-data, 30 for speed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="docs/results")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = SOURCE_FREE["steps"] if args.suite == "keep-data" else 30
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: expected a positive integer")
    results, table = SUITES[args.suite](args)
    out = Path(args.output_dir)
    results = {"suite": args.suite, "args": vars(args), "versions": versions(), **results}
    write_json(out / f"{args.suite}.json", results)
    write_text(out / f"{args.suite}.md", table)
    print(table)


if __name__ == "__main__":
    main()
