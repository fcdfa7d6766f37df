"""What the Metrics tab shows, as tables and as DataFrames for Gradio's own plots: production's test metrics,
the versions, and live monitoring from the prediction log's aggregates (never from rows, never pyplot)."""

from __future__ import annotations

import math

import pandas as pd

from . import LABELS
from .monitoring import CONFIDENCE_BINS, CONFIDENCE_EDGES

OVER_TIME_COLUMNS = ["time", "requests per minute", "mean latency (ms)"]
QUALITY_COLUMNS = ["time", "measure", "value"]
QUALITY_MEASURES = {"confidence": "mean confidence", "novelty": "mean unfamiliarity",
                    "flagged_share": "share flagged"}


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion: honest at 99 % on a few hundred photos."""
    if total == 0:
        return 0.0, 1.0
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def production_table(test: dict | None) -> pd.DataFrame:
    """Production's test metrics, a row each: accuracy with its interval, precision, recall, F1, ROC-AUC."""
    if not test:
        return pd.DataFrame({"metric": ["production"], "value": ["no version is in production"]})
    low, high = wilson_interval(round(test["accuracy"] * test["n_images"]), test["n_images"])
    rows = [("accuracy", f"{test['accuracy']:.2%}  (95 % interval {low:.1%}–{high:.1%})")]
    rows += [(name, "—" if test.get(key) is None else f"{test[key]:.4f}")
             for name, key in (("precision (dog)", "precision"), ("recall (dog)", "recall"), ("F1", "f1"),
                               ("ROC-AUC", "roc_auc"), ("log loss", "log_loss"))]
    rows.append(("test photos", f"{test['n_images']:,}"))
    return pd.DataFrame(rows, columns=["metric", "value"])


def versions_table(versions: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"version": row["version"], "production": "✔" if row["production"] else "",
                          "test accuracy": None if row["test_accuracy"] is None else round(row["test_accuracy"], 4),
                          "ROC-AUC": None if row["test_roc_auc"] is None else round(row["test_roc_auc"], 4),
                          "test photos": row["test_images"], "created": (row["created_at"] or "")[:16]}
                         for row in versions],
                        columns=["version", "production", "test accuracy", "ROC-AUC", "test photos", "created"])


def over_time(statistics: dict) -> pd.DataFrame:
    """Requests per minute and mean latency per period of the window (no rows: an empty frame)."""
    series = statistics.get("series") if statistics.get("count") else None
    if not series:
        return pd.DataFrame({column: [] for column in OVER_TIME_COLUMNS}).astype({"time": "datetime64[s]"})
    return pd.DataFrame({"time": pd.to_datetime(series["start"], unit="s"),
                         "requests per minute": series["requests_per_minute"],
                         "mean latency (ms)": series["latency_ms"]})


def quality_over_time(statistics: dict) -> pd.DataFrame:
    """Mean confidence, mean unfamiliarity and share flagged per period, in one long frame (all 0–1). An empty
    frame keeps the column types: the browser's plot fixes them from the first frame it is sent."""
    series = statistics.get("series") if statistics.get("count") else None
    rows = []
    if series:
        times = pd.to_datetime(series["start"], unit="s")
        for key, measure in QUALITY_MEASURES.items():
            rows += [(time, measure, value) for time, value in zip(times, series[key]) if value is not None]
    frame = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    return frame.astype({"time": "datetime64[s]", "measure": "str", "value": "float64"})


def dataset_table(stats: dict) -> pd.DataFrame:
    """Photos per class in the training data: the base folder, accepted uploads, suspects held back, total."""
    return pd.DataFrame([{"source": source, **{label: stats[source].get(label, 0) for label in LABELS}}
                         for source in ("base", "uploads", "suspect", "total")], columns=["source", *LABELS])


def label_mix(statistics: dict) -> pd.DataFrame:
    labels = statistics.get("labels") or {}
    return pd.DataFrame({"label": list(LABELS), "predictions": [labels.get(label, 0) for label in LABELS]})


def confidence_histogram(statistics: dict) -> pd.DataFrame:
    """Predictions per confidence bin, every bin present (all zero without predictions)."""
    counts = (statistics.get("confidence_histogram") or {}).get("counts") if statistics.get("count") else None
    bins = [f"{low:.2f}-{high:.2f}" for low, high in zip(CONFIDENCE_EDGES, CONFIDENCE_EDGES[1:])]
    return pd.DataFrame({"confidence": bins,
                         "predictions": counts or [0] * CONFIDENCE_BINS})


def monitoring_summary(statistics: dict, window: str) -> str:
    """One line on the window's traffic, for people."""
    if statistics.get("error"):
        return f"⚠️ {statistics['error']}"
    if not statistics.get("count"):
        return f"No predictions in this window ({window})."
    noun = "prediction" if statistics["count"] == 1 else "predictions"
    return (f"**{statistics['count']:,}** {noun} in this window ({window}), latency p50 "
            f"{statistics['latency_p50_ms']:.0f} ms / p95 {statistics['latency_p95_ms']:.0f} ms, "
            f"{statistics['flagged_share']:.1%} flagged, served by {len(statistics['replicas'])} replica(s).")
