"""The model card of a version: YAML metadata with model-index metrics, then prose, from a template."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("model_card_template.md")
METRIC_TYPES = ("accuracy", "precision", "recall", "f1", "roc_auc")


def fine_tuning_description(tuning: dict) -> str:
    """How phase 2 trained, from a version's metrics.json (training.fine_tuning): the words after "trained with
    the head — BatchNormalization frozen in inference mode —", up to the seconds it took."""
    config = tuning["config"]
    cosine, runs, epochs = config.get("schedule") == "cosine", config.get("runs", 1), config["epochs"]
    words = [augmentation_description(config, tuning.get("augmentation", 1)),
             f"Adam at {config['learning_rate']} " + ("falling along a cosine to 0" if cosine
                                                       else "lowered on a plateau"),
             f"batches of {config['batch_size']}"]
    if config.get("label_smoothing"):
        words.append(f"labels smoothed by {config['label_smoothing']}")
    if config.get("mixup"):
        words.append(f"each photo and its label blended with another of its batch (mixup, Beta({config['mixup']}, "
                     f"{config['mixup']}))")
    if config.get("pull_to_start"):
        words.append(f"the backbone's weights pulled back after each step towards where fine-tuning began, by "
                     f"{config['pull_to_start']} × the learning rate of their distance (L2-SP weight decay)")
    at_most = "" if cosine else "at most "  # the cosine schedule runs every epoch
    words.append(f"{runs} times from the same start, each run seeded apart, for {tuning['epochs_run']} epochs in all "
                 f"({at_most}{epochs} a run)" if runs > 1 else
                 f"for {tuning['epochs_run']} epochs" + (f" ({at_most}{epochs})" if at_most else ""))
    last = config.get("average_last")
    if not cosine:
        words.append("keeping each run's epoch with the lowest validation loss" if runs > 1
                     else "keeping the epoch with the lowest validation loss")
    elif last:
        words.append(f"each run's weights averaged over its last {last} epochs" if runs > 1
                     else f"the weights averaged over the last {last} epochs")
    if runs > 1:
        words.append("and the mean of the runs' weights is the model (a uniform model soup)")
    return ", ".join(words)


def augmentation_description(config: dict, revision: int) -> str:
    """The training photos' augmentation. Revision 1 (v5 and earlier) drew one random number for the mirroring,
    rotation and contrast of a photo, only ever raised the contrast, and cropped a whole batch at one offset."""
    if revision < 2:
        return (f"on photos cropped (from {100 * config['crop_margin']:.0f} % larger) at one random place per batch, "
                f"then mirrored, rotated (up to {360 * config['rotation']:.0f}°) and raised in contrast (up to "
                f"{100 * config['contrast']:.0f} %) by a single random draw per photo (so a photo was mirrored "
                "exactly when turned one way and raised the less)")
    changes = [f"randomly cropped (from {100 * config['crop_margin']:.0f} % larger)"] if config["crop_margin"] else []
    changes.append("mirrored")
    if config["rotation"]:
        changes.append(f"rotated (up to {360 * config['rotation']:.0f}°)")
    if config["contrast"]:
        changes.append(f"changed in contrast (±{100 * config['contrast']:.0f} %)")
    if len(changes) == 1:
        return f"on photos {changes[0]}"
    return f"on photos {', '.join(changes[:-1])} and {changes[-1]}, each drawn apart"


def render_model_card(model_name: str, version: str, config: dict, metrics: dict) -> str:
    test = metrics["test"]
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Cats vs. dogs image classification",
                   dataset_type="imagefolder", dataset_name=metrics["data"]["name"], dataset_split="test",
                   metric_type=metric, metric_name=metric.replace("_", "-"), metric_value=round(test[metric], 4))
        for metric in METRIC_TYPES if test.get(metric) is not None]
    card_data = ModelCardData(
        model_name=f"{model_name} {version}", library_name="keras", license="apache-2.0",
        pipeline_tag="image-classification", tags=["image-classification", "keras", "mobilenetv2", "cats-vs-dogs"],
        datasets=[metrics["data"]["name"]], metrics=list(METRIC_TYPES), eval_results=eval_results)
    head = config["head"]
    head_description = (f"dropout {head['dropout_rate']}, dense {head['hidden_units']} ReLU, " if head["hidden_units"]
                        else f"dropout {head['dropout_rate']}, ") + "one sigmoid unit"
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=model_name, version=version,
        alpha=config["backbone"]["alpha"], image_size=config["backbone"]["image_size"],
        weights_file=config["backbone"]["weights_file"], head_description=head_description, tta=config["tta"],
        test=test, validation=metrics["validation"], data=metrics["data"], training=metrics["training"],
        novelty=metrics.get("novelty"), command=metrics["command"],
        fine_tuning=fine_tuning_description(metrics["training"]["fine_tuning"])
        if metrics["training"].get("fine_tuning") else None)
    return str(card)
