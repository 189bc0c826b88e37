"""Presenting an evaluation result (the dict of :func:`.runner.evaluate`): terminal table and chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TABLE_METRICS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")


def format_table(result: dict[str, Any]) -> str:
    """Test metrics per model as an aligned text table; the default model is marked with ``*``."""
    tuning = result.get("tuning", {})
    header = ["model", *(metric.upper() for metric in TABLE_METRICS), "train s", "params", "chosen"]
    rows = [header]
    for entry in result["models"]:
        chosen = tuning.get(entry["name"], {}).get("params", {})
        rows.append(
            [
                entry["name"] + (" *" if entry["default"] else ""),
                *(_number(entry[metric]) for metric in TABLE_METRICS),
                f"{entry['train_seconds']:.1f}",
                f"{entry['params']:,}",
                " ".join(f"{key}={value:g}" for key, value in chosen.items()) or "-",
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        f"{result['dataset']}: {result.get('users', '?')} users, {result.get('items', '?')} items "
        "(test, full ranking; * = default model)"
    ]
    for index, row in enumerate(rows):
        numbers = [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *numbers, row[-1]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if result.get("similar"):
        lines += ["", "similar items (test item among the previous item's nearest; HR@10 NDCG@10 MRR):"]
        width = max(len(row["name"]) for row in result["similar"])
        lines += [
            f"{row['name'].ljust(width)}  {_number(row['hr@10'])}  {_number(row['ndcg@10'])}  {_number(row['mrr'])}"
            for row in result["similar"]
        ]
    return "\n".join(lines)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def plot_result(result: dict[str, Any], path: Path) -> None:
    """Write a PNG: test metrics per model (grouped bars) and validation NDCG@10 per epoch of the
    epoch-based models (the default model drawn bold)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    models = result["models"]
    curves = {
        entry["name"]: (result["tuning"][entry["name"]]["curve"], entry["default"])
        for entry in models
        if result.get("tuning", {}).get(entry["name"], {}).get("curve")
    }
    figure, (bars_axis, curve_axis) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(3, 2))

    width = 0.8 / max(1, len(models))
    positions = np.arange(len(TABLE_METRICS))
    for index, entry in enumerate(models):
        label = entry["name"] + (" (default)" if entry["default"] else "")
        bars_axis.bar(
            positions + (index - (len(models) - 1) / 2) * width,
            [entry[metric] for metric in TABLE_METRICS],
            width,
            label=label,
            edgecolor="black" if entry["default"] else None,
        )
    bars_axis.set_xticks(positions, [metric.upper() for metric in TABLE_METRICS])
    bars_axis.set_ylabel("test score")
    bars_axis.set_title(f"{Path(result['dataset']).parent.name or result['dataset']}: test metrics")
    bars_axis.legend(fontsize="small")
    bars_axis.grid(axis="y", alpha=0.3)

    if curves:
        for name, (curve, is_default) in curves.items():
            epochs = np.arange(1, len(curve) + 1)
            label = name + (" (default)" if is_default else "")
            curve_axis.plot(epochs, curve, marker="o", linewidth=2.5 if is_default else 1.2, label=label)
            best = result["tuning"][name]["params"].get("epochs")
            if best:
                curve_axis.axvline(best, linestyle=":", color=curve_axis.lines[-1].get_color())
        curve_axis.set_xlabel("epoch (dotted: epoch count kept for the test refit)")
        curve_axis.set_ylabel("validation NDCG@10")
        curve_axis.legend(fontsize="small")
        curve_axis.grid(alpha=0.3)
    else:
        curve_axis.text(0.5, 0.5, "no epoch-based model evaluated", ha="center", va="center")
        curve_axis.set_axis_off()
    curve_axis.set_title("validation curve")

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
