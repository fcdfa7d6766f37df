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
    words = [f"on photos randomly cropped (from {100 * config['crop_margin']:.0f} % larger), mirrored, rotated "
             f"(up to {360 * config['rotation']:.0f}°) and changed in contrast (±{100 * config['contrast']:.0f} %)",
             f"Adam at {config['learning_rate']} " + ("falling along a cosine to 0" if cosine
                                                       else "lowered on a plateau"),
             f"batches of {config['batch_size']}"]
    if config.get("label_smoothing"):
        words.append(f"labels smoothed by {config['label_smoothing']}")
    a_run = f"{epochs} a run" if cosine else f"at most {epochs} a run"
    words.append(f"{runs} times from the same start, each run seeded apart, for {tuning['epochs_run']} epochs in all "
                 f"({a_run})" if runs > 1 else
                 f"for {tuning['epochs_run']} epochs" + ("" if cosine else f" (at most {epochs})"))
    each = "each run's" if runs > 1 else "the"
    if not cosine:
        words.append(f"keeping {each} epoch with the lowest validation loss")
    elif config.get("average_last"):
        words.append(f"each run's weights the mean of those after each of its last {config['average_last']} epochs"
                     if runs > 1 else f"the weights the mean of those after each of the last {config['average_last']} "
                     "epochs")
    if runs > 1:
        words.append("and the mean of the runs' weights is the model (a uniform model soup)")
    return ", ".join(words)


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
