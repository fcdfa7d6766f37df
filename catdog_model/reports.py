"""Figures for the Metrics tab: accuracy across versions, and live monitoring from the prediction log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .monitoring import LoggedPrediction


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


def plot_monitoring(rows: list[LoggedPrediction], path: Path) -> Path:
    """Requests per minute, latency, label mix and confidence, from the prediction log."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(9, 5.5))
    (requests, latency), (labels, confidence) = axes
    if rows:
        times = np.array([row.time for row in rows])
        minutes = np.floor((times - times.min()) / 60)
        counts = np.bincount(minutes.astype(int))
        requests.plot(np.arange(len(counts)), counts, marker="o")
        latencies = np.array([row.latency_ms for row in rows])
        latency.hist(latencies, bins=30, color="#9dc3e6")
        for percent, style in ((50, "-"), (95, "--")):
            latency.axvline(np.percentile(latencies, percent), color="#1f4e79", linestyle=style,
                            label=f"p{percent} {np.percentile(latencies, percent):.0f} ms")
        latency.legend()
        labels.bar(["cat", "dog"], [sum(row.label == label for row in rows) for label in ("cat", "dog")],
                   color=["#f4b183", "#a9d18e"])
        confidence.hist([max(row.p_dog, 1 - row.p_dog) for row in rows], bins=10, range=(0.5, 1.0),
                        color="#9dc3e6")
    requests.set_title("requests per minute")
    latency.set_title("latency (ms)")
    labels.set_title("labels")
    confidence.set_title("confidence")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
