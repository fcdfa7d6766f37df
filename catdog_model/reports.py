"""What the Predict, Retrain and Metrics tabs show, for people: sentences, tables, and DataFrames for Gradio's own
plots — a prediction's warnings, a retraining's progress and verdict, production's test metrics, the versions,
and live monitoring from the prediction log's aggregates (never from rows, never pyplot)."""

from __future__ import annotations

import math
from html import escape

import pandas as pd

from . import LABELS
from .monitoring import CONFIDENCE_EDGES

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
    rows = [("accuracy", f"{test['accuracy']:.2%}"), ("accuracy, 95 % interval", f"{low:.1%}–{high:.1%}")]
    rows += [(name, "—" if test.get(key) is None else f"{test[key]:.4f}")
             for name, key in (("precision (dog)", "precision"), ("recall (dog)", "recall"), ("F1", "f1"),
                               ("ROC-AUC", "roc_auc"), ("log loss", "log_loss"))]
    rows.append(("test photos", f"{test['n_images']:,}"))
    return pd.DataFrame(rows, columns=["metric", "value"])


VERSION_COLUMNS = ["version", "production", "servable", "accuracy, trusted photos", "log loss, trusted photos",
                   "trusted photos", "accuracy, own test split", "own test split photos", "created"]


def versions_table(versions: list[dict]) -> pd.DataFrame:
    """A row a version. The trusted-photo columns are on one set for every version (comparable); the test-split
    columns are each version's own split, as training measured it (not comparable between versions)."""
    def trusted(row: dict) -> str:
        if row.get("trusted_accuracy") is not None:
            return _share(row["trusted_accuracy"])
        return "not measured" if row["servable"] else "— (no serving export)"

    return pd.DataFrame([{"version": row["version"], "production": "✔" if row["production"] else "",
                          "servable": "✔" if row["servable"] else "", "accuracy, trusted photos": trusted(row),
                          "log loss, trusted photos": "" if row.get("trusted_log_loss") is None
                          else f"{row['trusted_log_loss']:.3f}",
                          "trusted photos": "" if not row.get("trusted_images") else f"{row['trusted_images']:,}",
                          "accuracy, own test split": _share(row["test_accuracy"]),
                          "own test split photos": "" if row["test_images"] is None else f"{row['test_images']:,}",
                          "created": (row["created_at"] or "")[:16]}
                         for row in versions], columns=VERSION_COLUMNS)


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _periods(statistics: dict) -> tuple[pd.DatetimeIndex, list[int]] | None:
    """The series' period starts and, for each point to draw, its period. A single period is drawn from its
    start to its end, so that a line shows it."""
    series = statistics.get("series") if statistics.get("count") else None
    if not series or not series["start"]:
        return None
    starts = list(series["start"])
    indices = list(range(len(starts)))
    if len(starts) == 1:
        starts.append(starts[0] + series["step_seconds"])
        indices.append(0)
    return pd.to_datetime(starts, unit="s"), indices


def over_time(statistics: dict) -> pd.DataFrame:
    """Requests per minute and mean latency per period of the window (no rows: an empty frame)."""
    periods = _periods(statistics)
    if periods is None:
        return pd.DataFrame({column: [] for column in OVER_TIME_COLUMNS}).astype({"time": "datetime64[s]"})
    times, indices = periods
    series = statistics["series"]
    return pd.DataFrame({"time": times, "requests per minute": [series["requests_per_minute"][i] for i in indices],
                         "mean latency (ms)": [series["latency_ms"][i] for i in indices]})


def quality_over_time(statistics: dict) -> pd.DataFrame | None:
    """Mean confidence, mean unfamiliarity and share flagged per period, in one long frame (all 0–1); None
    without predictions: a plot with a colour column that is first sent an empty frame (Gradio 6.31) never
    draws the lines of the frames that follow."""
    periods = _periods(statistics)
    if periods is None:
        return None
    times, indices = periods
    rows = []
    for key, measure in QUALITY_MEASURES.items():
        values = [statistics["series"][key][i] for i in indices]
        rows += [(time, measure, value) for time, value in zip(times, values) if value is not None]
    frame = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    return frame.astype({"time": "datetime64[s]", "measure": "str", "value": "float64"})


def dataset_table(stats: dict) -> pd.DataFrame:
    """Photos per class in the training data: the base folder, accepted uploads, suspects held back, total."""
    return pd.DataFrame([{"source": source, **{label: stats[source].get(label, 0) for label in LABELS}}
                         for source in ("base", "uploads", "suspect", "total")], columns=["source", *LABELS])


def label_mix(statistics: dict) -> pd.DataFrame:
    """Predictions per label; no rows without predictions (an empty plot, not bars of zero)."""
    labels = statistics.get("labels") or {}
    shown = list(LABELS) if statistics.get("count") else []
    return pd.DataFrame({"label": shown, "predictions": [labels.get(label, 0) for label in shown]},
                        columns=["label", "predictions"]).astype({"label": "str", "predictions": "int64"})


def confidence_histogram(statistics: dict) -> pd.DataFrame:
    """Predictions per confidence bin, every bin present; no rows without predictions."""
    counts = (statistics.get("confidence_histogram") or {}).get("counts") if statistics.get("count") else None
    bins = [f"≥{low:.0%}" for low in CONFIDENCE_EDGES[:-1]]  # short: ten labels under a third of the row
    return pd.DataFrame({"confidence": bins if counts else [], "predictions": counts or []},
                        columns=["confidence", "predictions"]).astype({"confidence": "str", "predictions": "int64"})


CARD_COLOURS = {"green": "#15803d", "amber": "#b45309", "red": "#b91c1c", "grey": "#4b5563"}
DRIFT_STATUS = {"no drift": "green", "drift": "red"}  # every other verdict (too little traffic, …): amber
NO_DATA = "no data yet"
SOURCE_NAMES = {"ui": "from the Predict tab", "api": "through the Gradio API", "rest": "through REST"}


def metric_cards(statistics: dict, drift: dict, window: str) -> str:
    """The Metrics tab's headline figures as HTML cards: predictions, latency p50/p95, share flagged, and the
    drift verdict coloured green (no drift), red (drift) or amber (not tested: too little traffic, …)."""
    if statistics.get("error"):
        traffic = [("predictions", "Predictions", "log unavailable", statistics["error"], "amber")]
    elif not statistics.get("count"):
        traffic = [("predictions", "Predictions", NO_DATA, f"none in this window ({window})", "grey"),
                   ("latency", "Latency", NO_DATA, "p50 / p95", "grey"),
                   ("flagged", "Flagged", NO_DATA, "not sure or unfamiliar", "grey")]
    else:
        traffic = [("predictions", "Predictions", f"{statistics['count']:,}", f"in this window ({window})", "grey"),
                   ("latency", "Latency", f"{statistics['latency_p50_ms']:.0f} / {statistics['latency_p95_ms']:.0f} ms",
                    "p50 / p95", "grey"),
                   ("flagged", "Flagged", f"{statistics['flagged_share']:.1%}", "not sure or unfamiliar", "grey")]
    verdict = drift.get("verdict", "unknown")
    headline = verdict[:1].upper() + verdict[1:]
    note = drift.get("sentence", "").removeprefix(f"{headline}: ")  # the headline says it already
    cards = [*traffic, ("drift", "Drift", headline, note, DRIFT_STATUS.get(verdict, "amber"))]
    return ('<div class="catdog-cards" style="display:flex;flex-wrap:wrap;gap:12px">'
            + "".join(_card(*card) for card in cards) + "</div>")


def _card(name: str, title: str, value: str, note: str, status: str) -> str:
    colour = CARD_COLOURS[status]
    return (f'<div class="catdog-card" data-card="{name}" data-status="{status}" style="flex:1 1 200px;'
            f'border:2px solid {colour};border-radius:8px;padding:10px 14px">'
            f'<div style="font-size:0.85em;opacity:0.8">{escape(title)}</div>'
            f'<div class="catdog-card-value" style="font-size:1.6em;font-weight:700;color:{colour}">'
            f'{escape(value)}</div><div style="font-size:0.8em;opacity:0.8">{escape(note)}</div></div>')


def monitoring_summary(statistics: dict, window: str) -> str:
    """One line on the window's traffic beyond the cards: where it came from, and what people said of it."""
    if statistics.get("error"):
        return f"⚠️ {statistics['error']}"
    if not statistics.get("count"):
        return f"No predictions in this window ({window})."
    sources = ", ".join(f"{count:,} {SOURCE_NAMES.get(source, source)}"
                        for source, count in statistics["sources"].items() if count)
    return (f"Served by {_count(len(statistics['replicas']), 'replica')}; {sources}. "
            + decisions_summary(statistics.get("decisions") or {}, statistics["count"]))


def decisions_summary(decisions: dict[str, int], predictions: int) -> str:
    """What people said: corrections from the Predict tab (and their share of predictions), review decisions."""
    corrected = decisions.get("added", 0) + decisions.get("suspect", 0)
    share = f" ({corrected / predictions:.1%} of predictions)" if predictions else ""
    return (f"**{corrected}** {'correction' if corrected == 1 else 'corrections'}{share}, "
            f"{decisions.get('suspect', 0)} of them held for review; {_count(decisions.get('confirmed', 0), 'suspect')}"
            f" confirmed, {_count(decisions.get('labelled', 0), 'waiting photo')} labelled, "
            f"{_count(decisions.get('discarded', 0), 'photo')} discarded.")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


# The Predict tab: what one prediction says beyond its label, warnings first.

FLAG_WARNINGS = {
    "unfamiliar": "⚠️ This does not look like a cat or a dog photo: the model has seen nothing like it, so its "
                  "answer means little.",
    "low_confidence": "⚠️ Not sure: the model is torn between cat and dog.",
}


def prediction_details(flags: tuple[str, ...], line: str) -> str:
    """Each flag as a warning heading (as prominent as the label), then the line (version, time, …)."""
    warnings = [f"### {FLAG_WARNINGS.get(flag, flag)}" for flag in flags]
    return "\n\n".join([*warnings, line + (f" — flagged: {', '.join(flags)}" if flags else "")])


# The Retrain tab: a retraining's progress, verdict and comparison, for people.

COMPARED_METRICS = (("accuracy", "accuracy"), ("precision (dog)", "precision"), ("recall (dog)", "recall"),
                    ("F1", "f1"), ("ROC-AUC", "roc_auc"), ("log loss", "log_loss"))
PERCENT_METRICS = {"accuracy", "precision", "recall", "f1"}
EARLY_STOPPING_STAGES = ("training", "fine-tuning")


def retraining_progress(status: dict) -> str:
    """One line: the stage, how far it is, and the time left; while no retraining runs, also how far the
    background preparation of the next one has got."""
    if status["stage"] == "idle":
        return "No retraining has run yet." + _preparation(status.get("preparing"))
    if not status["running"]:
        seconds = status.get("seconds")
        took = f" in {_duration(seconds)}" if seconds is not None else ""
        return (f"The last retraining {'failed' if status['stage'] == 'failed' else 'finished'}{took}."
                + _preparation(status.get("preparing")))
    line = f"**{status['stage'][:1].upper()}{status['stage'][1:]}**"
    if status["total"]:
        line += f" — {status['done']:,} of {status['total']:,}"
    elif status["done"]:  # a stage without steps counts its seconds
        line += f" — {status['done']} s"
    if status.get("seconds_left") is not None:
        # Training stops early once the validation loss stops falling: its time left is an upper bound.
        bound = "at most" if status["stage"] in EARLY_STOPPING_STAGES else "about"
        line += f", {bound} {_duration(status['seconds_left'])} left"
    return line + "."


def _preparation(preparing: dict | None) -> str:
    if not preparing:
        return ""
    done = f": {preparing['done']:,} of {preparing['total']:,} photos" if preparing["total"] else ""
    return (f" Getting the next retraining ready in the background (embedding with production's backbone{done}); "
            "a retraining started now takes over from there.")


def retraining_verdict(status: dict) -> str:
    """The outcome in one sentence: promoted, or not and why; or why the retraining failed."""
    if status["stage"] == "failed":
        return f"❌ The retraining failed: {status['error']}"
    result = status.get("result")
    if status["running"] or not result:
        return ""
    if result.get("promoted"):
        return f"✅ **{result['version']} is in production now**: {result['reason']}."
    if result["version"] == status.get("production"):
        return (f"✅ **{result['version']} is in production now**, promoted by hand; the gate had said: "
                f"{result['reason']}.")
    return f"⏸️ **{result['version']} was not promoted**: {result['reason']}."


def retraining_comparison(result: dict | None) -> str:
    """The candidate beside the production it was judged against, on the same trusted photos, as a Markdown
    table: percentages with one decimal and the difference."""
    candidate, production = (result or {}).get("candidate"), (result or {}).get("production")
    if not candidate:
        return ""
    title = f"{result['version']} (candidate)"
    columns = [title] + ([f"{result['production_version']} (production)", "difference"] if production else [])
    lines = [f"**{' vs '.join(columns[:2])} on {candidate['n_images']:,} trusted photos**", "",
             "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, key in COMPARED_METRICS:
        cells = [_metric(key, candidate.get(key))]
        if production:
            cells += [_metric(key, production.get(key)), _difference(key, candidate.get(key), production.get(key))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1%}" if key in PERCENT_METRICS else f"{value:.3f}"


def _difference(key: str, candidate: float | None, production: float | None) -> str:
    if candidate is None or production is None:
        return "—"
    if key in PERCENT_METRICS:
        return f"{(candidate - production) * 100:+.1f} pt"
    return f"{candidate - production:+.3f}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


def production_line(production: str | None, servable: set[str] | None) -> str:
    """Which version is served now, and (unless servable is None) which ones promote and rollback can serve."""
    if production is None:
        return "No version is in production."
    if servable is None:
        return f"In production now: **{production}**."
    ordered = sorted(servable, key=lambda version: (len(version), version))  # v9 before v10
    return (f"In production now: **{production}**. Versions that can be served (promoted or rolled back to): "
            f"{', '.join(ordered) or 'none'}.")
