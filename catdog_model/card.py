"""The model card of a version: YAML metadata with model-index metrics, then prose, from a template."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).with_name("model_card_template.md")
METRIC_TYPES = ("accuracy", "precision", "recall", "f1", "roc_auc")


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
        novelty=metrics.get("novelty"), command=metrics["command"])
    return str(card)
