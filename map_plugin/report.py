"""Run reports: ``report.json`` (the schema of DESIGN.md), ``report.md`` (the same as a table), ``history.json``
(the numbers behind the curves) and ``curves.png``.

Accuracies are fractions; drops are points. ``target_drop`` and ``st_d`` use the first target.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from ._io import _atomic_write, write_json, write_text
from .metrics import protection_summary

__all__ = ["build_report", "format_table", "plot_curves", "versions", "write_report"]

_PACKAGES = ("map-plugin", "torch", "torchvision", "timm", "torch-pruning", "accelerate", "safetensors")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = "not installed"
    return out


def build_report(
    *,
    scenario: str,
    model: str,
    granularity: str,
    seed: int,
    steps: int,
    world_size: int,
    source: dict,
    targets: list[dict],
    kept_fraction: float,
    kept_per_layer: dict[str, float],
    macs: dict,
    params: dict,
    wall_time_s: float,
    config: dict,
    **extra,
) -> dict:
    """Assemble a report dict with the keys of DESIGN.md; ``extra`` keys are appended as they are.

    ``source`` and each target are ``{"domain": str, "before": float, "after": float}``.
    """
    if not targets:
        raise ValueError("a report needs at least one target")
    first = targets[0]
    summary = protection_summary(source["before"], source["after"], first["before"], first["after"])
    return {
        "scenario": scenario,
        "model": model,
        "granularity": granularity,
        "seed": seed,
        "steps": steps,
        "world_size": world_size,
        "source": source,
        "targets": targets,
        **summary,
        "kept_fraction": kept_fraction,
        "kept_per_layer": kept_per_layer,
        "macs": macs,
        "params": params,
        "wall_time_s": round(wall_time_s, 1),
        "versions": versions(),
        "config": config,
        **extra,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_table(report: dict) -> str:
    """The report as a Markdown table: one row per domain, then the headline numbers."""
    lines = [
        f"### {report['scenario']}: {report['model']} ({report['granularity']} masks, {report['steps']} steps, "
        f"seed {report['seed']}, {report['world_size']} process{'es' if report['world_size'] > 1 else ''})",
        "",
        "| domain | role | before | after | drop (pt) |",
        "|---|---|---|---|---|",
    ]
    rows = [("source", report["source"])] + [("target", t) for t in report["targets"]]
    for role, r in rows:
        drop = 100 * (r["before"] - r["after"])
        lines.append(f"| {r['domain']} | {role} | {_pct(r['before'])} | {_pct(r['after'])} | {drop:.1f} |")
    st_d = "n/a (target did not drop)" if report["st_d"] is None else f"{report['st_d']:.4f}"
    lines += [
        "",
        f"- source drop **{report['source_drop']:.1f} pt**, target drop **{report['target_drop']:.1f} pt**, "
        f"ST-D **{st_d}** (lower is better)",
        f"- weights kept: {_pct(report['kept_fraction'])}; MACs {report['macs']['before']:,.0f} -> "
        f"{report['macs']['after']:,.0f}; parameters {report['params']['before']:,} -> {report['params']['after']:,}",
        f"- wall time: {report['wall_time_s']:.1f} s",
    ]
    if "lambda" in report:
        lam = report["lambda"]
        lines.insert(
            -1,
            f"- suppress weight lambda {lam['start']:.3g} -> {lam['end']:.3g}, set by the run to hold the "
            f"suppress level at {lam['suppress_target']:.3g}",
        )
    if "structure" in report:
        s, lat = report["structure"], report["latency_ms"]
        lines.insert(
            -1,
            f"- structured ({s['order']}): MACs -{100 * s['macs_reduction_achieved']:.1f}% (asked "
            f"{100 * s['macs_reduction']:.0f}%); CPU latency, batch {lat['batch_size']}: "
            f"{lat['before']:.1f} ms -> {lat['after']:.1f} ms",
        )
    return "\n".join(lines) + "\n"


def plot_curves(history: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Plot every ``acc/<name>`` series of ``history`` against the step, as a PNG (atomically).

    Rows tagged with a ``stage`` (structured runs) get a dashed line where a new stage begins. A suppress
    weight that the run moved (``TrainConfig.suppress_target``) is drawn on a second axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("acc/"):
                series.setdefault(key[4:], []).append((row["step"], value))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, label=name)
    previous, last_step = None, 0
    for row in history:  # a stage begins where the previous one ended
        stage = row.get("stage")
        if stage != previous and stage is not None:
            ax.axvline(last_step, color="grey", linestyle="--", linewidth=0.8)
            ax.text(last_step, 97, f" {stage}", fontsize=7, color="grey", va="top")
        previous, last_step = stage, row["step"]
    ax.set_xlabel("mask-training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lams = [(row["step"], row["lam"]) for row in history if "lam" in row]
    if len({lam for _, lam in lams}) > 1:
        right = ax.twinx()
        xs, ys = zip(*lams, strict=True)
        (line,) = right.plot(xs, ys, color="grey", linestyle=":", label="λ (right axis)")
        right.set_ylabel("suppress weight λ")
        right.set_ylim(bottom=0)
        handles, labels = handles + [line], labels + [line.get_label()]
    ax.legend(handles, labels)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


def write_report(report: dict, history: list[dict], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``history.json`` (the losses and evaluations behind the curves)
    and ``curves.png`` into ``output_dir``."""
    output_dir = Path(output_dir)
    return {
        "json": write_json(output_dir / "report.json", report),
        "history": write_json(output_dir / "history.json", history),
        "md": write_text(output_dir / "report.md", format_table(report)),
        "curves": plot_curves(history, output_dir / "curves.png", f"{report['scenario']}: {report['model']}"),
    }
