"""Presenting an evaluation result (the dict of :func:`.runner.evaluate`): terminal table and chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TABLE_METRICS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")
BIAS_COLUMNS = (  # (entry key, header): the bias metrics of .bias
    ("coverage@10", "COV@10"),
    ("arp@10", "ARP@10"),
    ("tail@10", "TAIL@10"),
    ("ndcg@10 short", "NDCG@10 short"),
    ("ndcg@10 medium", "medium"),
    ("ndcg@10 long", "long"),
)
DEBIAS_COLUMNS = (("ndcg@10", "NDCG@10"), ("hr@10", "HR@10"), *BIAS_COLUMNS[:3])


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
    if "bias" in result and all("coverage@10" in entry for entry in result["models"]):
        lines += ["", _bias_caption(result["bias"])]
        lines += _aligned(
            ["model", *(header for _, header in BIAS_COLUMNS)],
            [
                [entry["name"], *(_bias_number(key, entry[key]) for key, _ in BIAS_COLUMNS)]
                for entry in result["models"]
            ],
        )
    if "debias" in result:
        lines += [
            "",
            f"popularity penalty (STREAMREC_SCORER_POPULARITY_PENALTY): the top {result['debias']['candidates']} "
            "re-ranked by score - penalty × ln(1 + popularity), cut to 10:",
        ]
        lines += _aligned(
            ["model", "penalty", *(header for _, header in DEBIAS_COLUMNS)],
            [
                [
                    entry["name"],
                    f"{point['penalty']:g}",
                    *(_bias_number(key, point[key]) for key, _ in DEBIAS_COLUMNS),
                ]
                for entry in result["models"]
                for point in entry.get("debias", [])
            ],
        )
    return "\n".join(lines)


def _bias_caption(bias: dict[str, Any]) -> str:
    short, medium, long = bias["history_users"]
    c1, c2 = bias["history_cuts"]
    return (
        f"bias of the test top-10 lists (long tail: outside the {bias['head_items']} most popular items, "
        f"popularity >= {bias['head_min_popularity']}; history thirds: <= {c1} / <= {c2} / > {c2} "
        f"interactions, {short} / {medium} / {long} users):"
    )


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """Rows under a header and a rule; first column left-aligned, the others right-aligned."""
    table = [header, *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = []
    for index, row in enumerate(table):
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _bias_number(key: str, value: float | None) -> str:
    if value is None:  # a history third without users
        return "-"
    return "nan" if math.isnan(value) else f"{value:.1f}" if key == "arp@10" else f"{value:.4f}"


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def plot_result(result: dict[str, Any], path: Path) -> None:
    """Write a PNG: test metrics per model (grouped bars) and validation NDCG@10 per epoch of the
    epoch-based models (the default model drawn bold); with a ``debias`` result, below them the
    popularity penalty's trade-off: NDCG@10 against coverage@10 and against tail@10."""
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
    debias = "debias" in result
    if debias:
        figure, axes = plt.subplots(2, 2, figsize=(13, 9.6), width_ratios=(3, 2))
        (bars_axis, curve_axis), (coverage_axis, tail_axis) = axes
        _plot_debias(result, coverage_axis, "coverage@10", "catalogue coverage@10")
        _plot_debias(result, tail_axis, "tail@10", "long-tail share of the top 10")
    else:
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


def _plot_debias(result: dict[str, Any], axis: Any, metric: str, label: str) -> None:
    """Test NDCG@10 against ``metric`` for each model's penalties; the default model's points are
    labelled with their penalty."""
    for entry in result["models"]:
        points = entry.get("debias", [])
        if not points:
            continue
        name = entry["name"] + (" (default)" if entry["default"] else "")
        axis.plot(
            [point[metric] for point in points],
            [point["ndcg@10"] for point in points],
            marker="o",
            linewidth=2.5 if entry["default"] else 1.0,
            alpha=1.0 if entry["default"] else 0.6,
            label=name,
        )
        if entry["default"]:
            for point in points:
                axis.annotate(
                    f"{point['penalty']:g}",
                    (point[metric], point["ndcg@10"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize="small",
                )
    axis.set_xlabel(label)
    axis.set_ylabel("test NDCG@10")
    axis.set_title(f"popularity penalty (labels: penalty), top {result['debias']['candidates']} re-ranked")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
