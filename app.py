"""catdog's Gradio app: Predict, Retrain and Metrics tabs, named API endpoints, /health and /api/status.
Wiring only: every decision is in catdog_model.service."""

from __future__ import annotations

import functools
import os
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr
import pandas as pd
import uvicorn
from fastapi import FastAPI

from catdog_model.config import Settings
from catdog_model.hub import HubError
from catdog_model.service import Service

BATCH_COLUMNS = ["file", "label", "p_dog", "confidence", "flags"]


def user_errors(function):
    """Mistakes a user can fix reach them as a gr.Error sentence, not a stack trace."""
    @functools.wraps(function)
    def wrapper(*arguments):
        try:
            return function(*arguments)
        except (ValueError, HubError) as error:
            raise gr.Error(str(error)) from None
    return wrapper


def build_demo(service: Service) -> gr.Blocks:
    @user_errors
    def predict(image: str) -> dict:
        if not image:
            raise ValueError("No image was given: upload, drop or paste a photo.")
        return service.predict(image, origin="api")[0].as_label_dict()

    @user_errors
    def predict_with_details(image: str):
        if not image:
            raise ValueError("No image was given: upload, drop or paste a photo.")
        prediction, latency_ms = service.predict(image, origin="ui")
        flags = f" — flagged: {', '.join(prediction.flags)}" if prediction.flags else ""
        return prediction.as_label_dict(), f"Model **{prediction.version}**, {latency_ms:.0f} ms{flags}"

    @user_errors
    def predict_batch(files: list[str] | None):
        rows = service.predict_batch(files or [], origin="api")
        table = pd.DataFrame(rows, columns=BATCH_COLUMNS)
        csv_path = os.path.join(tempfile.mkdtemp(prefix="catdog-batch-"), "predictions.csv")
        table.to_csv(csv_path, index=False)
        return table, csv_path

    @user_errors
    def upload_training_data(label: str, files: list[str] | None, token: str):
        service.check_token(token)
        results = service.upload(label, files or [])
        return pd.DataFrame(results, columns=["file", "status", "reason"]), service.dataset_stats()

    @user_errors
    def retrain(token: str) -> str:
        service.check_token(token)
        return service.start_retrain()

    def retrain_status() -> dict:
        state = service.retrain_state
        return {"running": state.running, "stage": state.stage, "done": state.done, "total": state.total,
                "log": state.log[-20:], "result": state.result, "error": state.error}

    @user_errors
    def promote(version: str, token: str) -> str:
        service.check_token(token)
        return f"Production is now {service.promote(version.strip())}."

    @user_errors
    def rollback(token: str) -> str:
        service.check_token(token)
        return f"Rolled back: production is now {service.rollback()}."

    def metrics() -> dict:
        production = service.hub.production()
        return {"production": production, "test": service.hub.metrics()["test"] if production else None,
                "monitoring": service.log.statistics()}

    def versions() -> pd.DataFrame:
        rows = [{"version": row["version"], "production": row["production"], "created_at": row["created_at"],
                 "test_accuracy": row["test"].get("accuracy"), "test_roc_auc": row["test"].get("roc_auc")}
                for row in service.hub.list_versions()]
        return pd.DataFrame(rows, columns=["version", "production", "created_at", "test_accuracy", "test_roc_auc"])

    with gr.Blocks(title="catdog") as demo:
        gr.Markdown("# catdog — cats vs. dogs")
        if service.load_error:
            gr.Markdown(f"**The model is not loaded:** {service.load_error}")
        token = gr.Textbox(label="Admin token", type="password", visible=bool(service.settings.admin_token))
        with gr.Tab("Predict"):
            with gr.Row():
                image = gr.Image(type="filepath", label="Photo", sources=["upload", "clipboard"])
                with gr.Column():
                    label = gr.Label(num_top_classes=2, label="Prediction")
                    details = gr.Markdown()
            predict_button = gr.Button("Classify", variant="primary")
            predict_button.click(predict_with_details, image, [label, details], api_name="predict_with_details")
            gr.Button(visible=False).click(predict, image, label, api_name="predict")
            batch_files = gr.File(file_count="multiple", type="filepath", label="Many photos")
            batch_button = gr.Button("Classify all")
            batch_table = gr.Dataframe(headers=BATCH_COLUMNS, label="Results")
            batch_csv = gr.File(label="Results as CSV")
            batch_button.click(predict_batch, batch_files, [batch_table, batch_csv], api_name="predict_batch")
        with gr.Tab("Retrain"):
            upload_label = gr.Radio(["cat", "dog"], value="cat", label="Class of these images")
            upload_files = gr.File(file_count="multiple", type="filepath", label="Images or a zip")
            upload_button = gr.Button("Add to training data")
            upload_results = gr.Dataframe(headers=["file", "status", "reason"], label="Per file")
            stats = gr.JSON(label="Dataset")
            upload_button.click(upload_training_data, [upload_label, upload_files, token], [upload_results, stats],
                                api_name="upload_training_data")
            retrain_button = gr.Button("Retrain", variant="primary")
            retrain_message = gr.Markdown()
            retrain_button.click(retrain, token, retrain_message, api_name="retrain")
            status = gr.JSON(label="Retraining")
            gr.Timer(2).tick(retrain_status, None, status, api_name="retrain_status")
            version_box = gr.Textbox(label="Version to promote (e.g. v2)")
            with gr.Row():
                promote_button = gr.Button("Promote")
                rollback_button = gr.Button("Roll back")
            version_message = gr.Markdown()
            promote_button.click(promote, [version_box, token], version_message, api_name="promote")
            rollback_button.click(rollback, token, version_message, api_name="rollback")
        with gr.Tab("Metrics"):
            refresh = gr.Button("Refresh")
            metrics_json = gr.JSON(label="Production and monitoring")
            versions_table = gr.Dataframe(label="Versions")
            dataset_json = gr.JSON(label="Dataset")
            refresh.click(metrics, None, metrics_json, api_name="metrics")
            refresh.click(versions, None, versions_table, api_name="versions")
            refresh.click(service.dataset_stats, None, dataset_json, api_name="dataset_stats")
    return demo


def build_app(service: Service) -> FastAPI:
    app = FastAPI()
    app.get("/health")(service.health)
    app.get("/api/status")(service.status)
    return gr.mount_gradio_app(app, build_demo(service), path="/")


if __name__ == "__main__":
    uvicorn.run(build_app(Service(Settings.from_env())), host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
