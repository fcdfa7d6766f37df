"""Figures for the Metrics tab: accuracy across versions, and live monitoring from the prediction log."""

from __future__ import annotations

import datetime
from pathlib import Path



def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_versions(versions: list[dict], path: Path) -> Path:
    """Test accuracy of each version; production in a darker bar."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3))
    names = [row["version"] for row in versions]
    accuracy = [row["test"].get("accuracy") or 0 for row in versions]
    colors = ["#1f4e79" if row["production"] else "#9dc3e6" for row in versions]
    axes.bar(names, accuracy, color=colors)
    axes.set_ylim(max(0.0, min(accuracy, default=0.9) - 0.05), 1.0)
    axes.set_ylabel("test accuracy")
    axes.set_title("Versions (dark: production)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_monitoring(statistics: dict, drift: dict, path: Path) -> Path:
    """Requests per minute, latency, label mix, confidence and unfamiliarity over the window — from the
    database's aggregates, never from rows."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(12, 5.5))
    (requests, latency, labels), (confidence, unfamiliar, flagged) = axes
    if statistics.get("count"):
        series = statistics["series"]
        times = [datetime.datetime.fromtimestamp(start) for start in series["start"]]
        requests.plot(times, series["requests_per_minute"], marker=".")
        latency.plot(times, series["latency_ms"], marker=".", label="mean")
        for name, style in (("latency_p50_ms", "-"), ("latency_p95_ms", "--")):
            latency.axhline(statistics[name], color="#1f4e79", linestyle=style,
                            label=f"{name.split('_')[1]} {statistics[name]:.0f} ms")
        latency.legend()
        labels.bar(list(statistics["labels"]), list(statistics["labels"].values()), color=["#f4b183", "#a9d18e"])
        edges = statistics["confidence_histogram"]["edges"]
        confidence.bar(edges[:-1], statistics["confidence_histogram"]["counts"], width=edges[1] - edges[0],
                       align="edge", color="#9dc3e6")
        novelty = [(time, value) for time, value in zip(times, series["novelty"]) if value is not None]
        if novelty:
            unfamiliar.plot(*zip(*novelty), marker=".", label="recent")
        reference = drift.get("tests", {}).get("novelty", {}).get("reference_mean")
        if reference is not None:
            unfamiliar.axhline(reference, color="#c00000", linestyle="--", label="validation photos")
            unfamiliar.legend()
        flagged.plot(times, series["flagged_share"], marker=".")
        for axis in (requests, latency, unfamiliar, flagged):
            axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    else:
        for axis in axes.flat:
            axis.text(0.5, 0.5, "no predictions in this window", ha="center", va="center",
                      transform=axis.transAxes, color="#7f7f7f")
    for axis, title in ((requests, "requests per minute"), (latency, "latency (ms)"), (labels, "labels"),
                        (confidence, "confidence"), (unfamiliar, "mean unfamiliarity"),
                        (flagged, "share flagged")):
        axis.set_title(title)
    figure.suptitle(drift.get("sentence", ""), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
