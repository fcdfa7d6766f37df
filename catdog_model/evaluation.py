"""Metrics and plots for p(dog) against true labels (positive class: dog). scikit-learn and matplotlib are
imported where they are used: they take over a second, and a command refused for a mistake (`catdog train`,
`evaluate`, `data-issues`) should say so at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import LABELS
from .errors import ServiceError


def compute_metrics(labels: list[str], p_dog: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, log loss and the confusion matrix (rows: true cat, dog)."""
    from sklearn import metrics as sk_metrics

    if len(labels) != len(p_dog):
        raise ValueError(f"{len(labels)} labels but {len(p_dog)} probabilities.")
    if len(labels) == 0:
        raise ServiceError("No images to evaluate.")
    truth = np.array([LABELS.index(label) for label in labels])
    p_dog = np.clip(np.asarray(p_dog, dtype=np.float64), 0.0, 1.0)
    predicted = (p_dog >= threshold).astype(int)
    both_classes = len(set(truth.tolist())) == 2
    return {
        "accuracy": float(sk_metrics.accuracy_score(truth, predicted)),
        "precision": float(sk_metrics.precision_score(truth, predicted, zero_division=0)),
        "recall": float(sk_metrics.recall_score(truth, predicted, zero_division=0)),
        "f1": float(sk_metrics.f1_score(truth, predicted, zero_division=0)),
        # ROC-AUC is undefined with one class present; None says so instead of a made-up number.
        "roc_auc": float(sk_metrics.roc_auc_score(truth, p_dog)) if both_classes else None,
        "log_loss": float(sk_metrics.log_loss(truth, p_dog, labels=[0, 1])),
        "confusion_matrix": sk_metrics.confusion_matrix(truth, predicted, labels=[0, 1]).tolist(),
        "n_images": int(len(truth)),
    }


def save_plots(labels: list[str], p_dog: np.ndarray, out_dir: Path, title: str = "") -> list[Path]:
    """confusion_matrix.png and roc_curve.png in out_dir; returns their paths."""
    import matplotlib
    from sklearn import metrics as sk_metrics

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = np.array([LABELS.index(label) for label in labels])
    predicted = (np.asarray(p_dog) >= 0.5).astype(int)

    figure, axes = plt.subplots(figsize=(4.5, 4))
    sk_metrics.ConfusionMatrixDisplay.from_predictions(truth, predicted, labels=[0, 1], display_labels=LABELS,
                                                      ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(f"Confusion matrix {title}".strip())
    confusion_path = out_dir / "confusion_matrix.png"
    figure.tight_layout()
    figure.savefig(confusion_path, dpi=120)
    plt.close(figure)

    paths = [confusion_path]
    if len(set(truth.tolist())) == 2:
        figure, axes = plt.subplots(figsize=(4.5, 4))
        sk_metrics.RocCurveDisplay.from_predictions(list(labels), p_dog, pos_label="dog", ax=axes,
                                                    name="catdog")
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
        axes.set_title(f"ROC curve {title}".strip())
        roc_path = out_dir / "roc_curve.png"
        figure.tight_layout()
        figure.savefig(roc_path, dpi=120)
        plt.close(figure)
        paths.append(roc_path)
    return paths
