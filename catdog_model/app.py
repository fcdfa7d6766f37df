"""catdog's Gradio app: Predict, Retrain and Metrics tabs, named API endpoints, /health and /api/status.
Wiring only: every decision is in catdog_model.service and the parts it builds (curation, dashboard)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time

import gradio as gr
import pandas as pd
import uvicorn
from fastapi import FastAPI, File, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import LABELS, cli
from .config import Settings
from .data_review import DEFAULT_TOP, Shown, review_sentence
from .monitoring import WINDOWS
from .errors import ServiceError, public_message
from .gradio_sessions import share_session_config
from .reports import prediction_details
from .service import BATCH_COLUMNS, Service
from .web import (CheckedCalls, LoopbackHostOnly, RequestBodyLimit, admitted, as_gradio_errors,
                  forget_finished_sessions, input_path, input_paths, rest_prediction, too_large_message)

PREDICT_CONCURRENCY = 16
SESSION_CAPACITY = 256
ANALYTICS_EVENTS = 1000
REST_USAGE = ("POST /api/predict takes one photo as a multipart form field named `file`, for example "
              "curl -F file=@photo.jpg http://HOST:PORT/api/predict.")
logger = logging.getLogger("catdog.app")


def with_photo_example(component):
    """The component, its example on the API page and in view_api() a photo's path (handle_file('cat.jpg'))
    rather than Gradio's picture of a bus or sample PDF on GitHub. Set on the instance: a subclass of a Gradio
    component would make Gradio write a .pyi file beside this module."""
    def photo(name: str) -> dict:  # as handle_file gives it, without looking for the file here
        return {"path": name, "url": name, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    many = getattr(component, "file_count", "single") != "single"
    example = [photo("cat.jpg"), photo("dog.jpg")] if many else photo("cat.jpg")
    component.example_payload = lambda: example
    return component


def build_demo(service: Service) -> gr.Blocks:
    # File inputs arrive unprocessed (preprocess=False, see input_paths): catdog's decoder, with its limits
    # and memory budget, is the only one that ever reads them.
    # One photo's events wait for decode memory on the event loop (admitted), not in a worker thread.
    budget = service.limits.budget

    @as_gradio_errors
    async def predict(image: dict | None) -> dict:
        """Classify one photo: {"label", "confidences"} as gr.Label gives it."""
        path = input_path(image)
        prediction, _ = await admitted(lambda: service.predict(path, origin="api"), budget)
        return prediction.as_label_dict()

    @as_gradio_errors
    async def predict_with_details(image: dict | None):
        """Classify one photo, as the Predict tab does: the label, and its warnings (unfamiliar, not sure) above
        a line with the version and time."""
        path = input_path(image)
        prediction, latency_ms = await admitted(lambda: service.predict(path, origin="ui"), budget)
        line = f"Model **{prediction.version}**, {latency_ms:.0f} ms"
        return prediction.as_label_dict(), prediction_details(prediction.flags, line)

    @as_gradio_errors
    async def explain(image: dict | None):
        """Where the photo made the model say dog or cat: the heat map over the photo (its own aspect ratio),
        the label, and its warnings above the line."""
        path = input_path(image)
        prediction, heat_map = await admitted(lambda: service.explain(path), budget)
        line = f"Model **{prediction.version}**: red pushed towards dog, blue towards cat"
        return heat_map, prediction.as_label_dict(), prediction_details(prediction.flags, line)

    @as_gradio_errors
    def correct(image: dict | None, label: str, token: str = "") -> str:
        """Say production got this photo wrong: it joins the uploads as `label` (admin token where one is set)."""
        service.check_token(token)
        return service.curation.correct(input_path(image), label)

    @as_gradio_errors
    def predict_batch(files: list[dict] | None, origin: str = "api"):
        """Classify many photos: a table, a row a file (or why it was not classified), and the same as CSV."""
        rows = service.predict_batch(input_paths(files), origin=origin)
        return pd.DataFrame(rows, columns=list(BATCH_COLUMNS)), str(service.save_batch_csv(rows))

    def predict_batch_in_tab(files: list[dict] | None):
        """Classify all, as the Predict tab does: logged as `ui`; a refusal (no photos, too many) is a warning,
        and the tables stay empty rather than marked as failed."""
        try:
            return predict_batch(files, origin="ui")
        except gr.Error as refusal:
            gr.Warning(refusal.message)
            return None, None

    @as_gradio_errors
    def upload_training_data(label: str, files: list[dict] | None, token: str = ""):
        """Add photos (or zip archives) of one class to the training data: a row a file, and the counts."""
        service.check_token(token)
        results = service.curation.upload(label, input_paths(files))
        # The file list is emptied: the next class's click must not send these files again with its label.
        return pd.DataFrame(results, columns=["file", "status", "reason"]), service.curation.dataset_stats(), None

    @as_gradio_errors
    def confirm_suspects(token: str = ""):
        """The uploads held as suspect join training; the sentence and the counts."""
        service.check_token(token)
        return service.curation.review_suspects(confirm=True), service.curation.dataset_stats()

    @as_gradio_errors
    def discard_suspects(token: str = ""):
        """The uploads held as suspect are discarded; the sentence and the counts."""
        service.check_token(token)
        return service.curation.review_suspects(confirm=False), service.curation.dataset_stats()

    @as_gradio_errors
    def label_photo(sha256: str | None, label: str, token: str):
        service.check_token(token)
        if not sha256:
            raise ServiceError("Choose a photo waiting for a label first: click one under To label (programs: "
                               "a sha256 from /photos_to_label).")
        return service.curation.label_photo(sha256, label), service.curation.dataset_stats()

    @as_gradio_errors
    def photos_to_label(token: str):
        service.check_token(token)  # they are users' photos: for admins only
        thumbnails, hashes = service.curation.photos_to_label()
        return gr.Gallery(thumbnails, selected_index=None), hashes, None  # nothing looks chosen that is not

    def choose_photo(hashes: list[str], selected: gr.SelectData) -> str | None:
        return hashes[selected.index] if isinstance(selected.index, int) and 0 <= selected.index < len(hashes) \
            else None

    @as_gradio_errors
    def find_data_issues(token: str, progress=gr.Progress()):
        """The likeliest problems among the labelled photos, then those decided earlier: the gallery, the hashes
        and captions this page lists (a later ranking elsewhere does not change them), and what was found."""
        service.check_token(token)  # uploads are users' photos: for admins only
        ranking, listed = service.review_data(
            DEFAULT_TOP, lambda stage, done, total: progress((done, total), desc=stage))
        return (gr.Gallery(service.data_review.gallery(listed), selected_index=None),
                [photo.sha256 for photo in listed], [photo.caption for photo in listed], None,
                review_sentence(ranking, listed))

    @as_gradio_errors
    def decide_photo(sha256: str | None, action: str, token: str) -> str:
        service.check_token(token)
        if not sha256:
            raise ServiceError("Choose a photo among the data issues first: click one (programs: a sha256 from "
                               "/data_issues).")
        return service.data_review.decide(sha256, action)

    @as_gradio_errors
    def listed_data_issues(hashes: list[str], captions: list[str], token: str):
        """This page's list drawn again, each photo's decision since in its caption."""
        service.check_token(token)
        return service.data_review.gallery([Shown(sha256, caption) for sha256, caption in zip(hashes, captions)])

    def data_issues_report(token: str, top: int) -> dict:
        service.check_token(token)
        ranking, listed = service.review_data(top)
        return {**ranking.report, "suspects": service.data_review.rows(ranking, listed)}

    @as_gradio_errors
    def retrain(token: str, fine_tune: bool = False) -> dict:
        service.check_token(token)
        service.start_retrain(fine_tune)
        return service.dashboard.retrain_status()

    @as_gradio_errors
    def retraining_view(with_versions: bool = True) -> list:
        """The running (or last) retraining as the Retrain tab shows it: progress, verdict, comparison, log."""
        view = service.dashboard.retrain_view(with_versions)
        return [view[name] for name in ("progress", "verdict", "comparison", "log", "production")]

    @as_gradio_errors
    def retrain_and_follow(fine_tune: bool, token: str = "", progress=gr.Progress()):
        """Start a retraining and follow it to its verdict, as the Retrain tab does (a generator)."""
        service.check_token(token)
        service.start_retrain(fine_tune)
        while True:
            status = service.dashboard.retrain_status()
            if status["total"]:
                progress((status["done"], status["total"]), desc=status["stage"])
            yield retraining_view(with_versions=not status["running"])
            if not status["running"]:
                return
            time.sleep(1)

    @as_gradio_errors
    def promote(version: str, token: str = "") -> str:
        """Make a version production (it is loaded first; the served model swaps without a restart)."""
        service.check_token(token)
        return f"Production is now {service.promote(version)}."

    @as_gradio_errors
    def rollback(token: str = "") -> str:
        """Production goes back to the latest earlier production that can be served."""
        service.check_token(token)
        return service.rollback()

    @as_gradio_errors
    def refresh_metrics(window: str):
        """The Metrics tab over the window (hour, day or all): headline cards (HTML), traffic, production,
        versions, plots."""
        view = service.dashboard.metrics_view(window)
        return [view[name] for name in ("cards", "summary", "production_table", "confusion_matrix", "roc_curve",
                                        "versions_table", "over_time", "over_time", "quality", "labels",
                                        "confidence", "dataset_table")]

    # Gradio's queue rebuilds an analytics summary (a pandas DataFrame over up to 10,000 recent events) after
    # every event by default: a few milliseconds of each call under load. Rarely, over fewer events, here.
    # Read when the Blocks (and their queue) are built, so set just before.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVENTS))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", str(ANALYTICS_EVENTS))
    cache_seconds = int(service.settings.file_cache_minutes * 60)
    # Uploaded files and results leave Gradio's cache once they are this old (checked four times as often).
    with gr.Blocks(title="catdog", analytics_enabled=False,
                   delete_cache=(max(1, cache_seconds // 4), max(1, cache_seconds))) as demo:
        gr.Markdown("# catdog — cats vs. dogs")
        if service.load_error:
            gr.Markdown("⚠️ **No model is loaded, so predictions are unavailable:** "
                        f"{public_message(service.load_error)}")
        # value="": a client need not pass a token where the server takes none (tokenless, on loopback).
        token = gr.Textbox(label="Admin token", type="password", value="",
                           visible=bool(service.settings.admin_token))
        with gr.Tab("Predict"):
            with gr.Row():
                image = with_photo_example(gr.Image(type="filepath", label="Photo",
                                                    sources=["upload", "clipboard"]))
                with gr.Column():
                    details = gr.Markdown(label="details")  # above the label: a warning is read first
                    label = gr.Label(num_top_classes=2, label="Prediction")
                    with gr.Row():
                        predict_button = gr.Button("Classify", variant="primary")
                        explain_button = gr.Button("Show why")
            with gr.Row():
                correct_as_cat = gr.Button("Wrong? It's a cat", size="sm")
                correct_as_dog = gr.Button("Wrong? It's a dog", size="sm")
            correction_text = gr.Markdown(label="message")
            heat_map = gr.Image(label="Why: red pushed towards dog, blue towards cat", type="numpy",
                                interactive=False)
            if examples := service.example_images():
                gr.Examples(examples, inputs=image)
            # Photos are decoded and run side by side: decoding and ONNX Runtime release the GIL.
            predict_button.click(predict_with_details, image, [label, details], api_name="predict_with_details",
                                 concurrency_limit=PREDICT_CONCURRENCY, concurrency_id="predict", preprocess=False)
            # /predict answers in gr.Label's format, which gr.api would not give, and takes the raw file, so every
            # byte a client sends reaches catdog's own validation, not an image component's decoding first.
            api_image = with_photo_example(gr.Image(visible=False, type="filepath", label="photo"))
            gr.Button(visible=False).click(predict, api_image, label, api_name="predict", preprocess=False,
                                           concurrency_limit=PREDICT_CONCURRENCY, concurrency_id="predict")
            explain_button.click(explain, image, [heat_map, label, details], api_name="explain", preprocess=False,
                                 concurrency_limit=PREDICT_CONCURRENCY, concurrency_id="predict")
            # A correction is an upload under the class the person names (see Curation.correct).
            api_label = gr.Radio(list(LABELS), visible=False, label="label")
            gr.Button(visible=False).click(correct, [api_image, api_label, token], correction_text,
                                           api_name="correct", preprocess=False)
            corrected = [button.click(lambda photo, secret, named=named: correct(photo, named, secret),
                                      [image, token], correction_text, api_name=False, preprocess=False)
                         for button, named in ((correct_as_cat, "cat"), (correct_as_dog, "dog"))]
            for event in corrected:
                clear_on_failure(event, correction_text)
            # A new photo clears the answers about the last one.
            image.change(lambda: (None, "", None, ""), None, [label, details, heat_map, correction_text],
                         api_name=False, queue=False)
            gr.Markdown("### Many photos")
            batch_files = gr.File(file_count="multiple", type="filepath", label="Photos")
            batch_button = gr.Button("Classify all")
            batch_table = gr.Dataframe(headers=list(BATCH_COLUMNS), label="Results")
            batch_csv = gr.File(label="Results as CSV")
            batch_button.click(predict_batch_in_tab, batch_files, [batch_table, batch_csv], api_name=False,
                               preprocess=False)
            api_files = with_photo_example(gr.File(visible=False, file_count="multiple", type="filepath",
                                                  label="photos"))
            gr.Button(visible=False).click(predict_batch, api_files, [batch_table, batch_csv],
                                           api_name="predict_batch", preprocess=False)
        with gr.Tab("Retrain"):
            upload_label = gr.Radio(list(LABELS), value=LABELS[0], label="Class of these images")
            upload_files = with_photo_example(gr.File(file_count="multiple", type="filepath",
                                                     label="Images or a zip archive"))
            upload_button = gr.Button("Add to training data")
            upload_results = gr.Dataframe(headers=["file", "status", "reason"], label="Per file")
            stats = gr.JSON(label="Dataset")
            uploaded = upload_button.click(upload_training_data, [upload_label, upload_files, token],
                                [upload_results, stats, upload_files], api_name="upload_training_data",
                                preprocess=False)
            gr.Markdown("Images that production confidently calls the other class (uploads and corrections from "
                        "the Predict tab) are held as *suspect*, out of training, until you confirm or discard them.")
            suspects = gr.Gallery(label="Held for review", columns=8, height="auto", interactive=False)
            with gr.Row():
                confirm_button = gr.Button("Confirm suspect images")
                discard_button = gr.Button("Discard suspect images")
            suspects_message = gr.Markdown(label="message")
            reviewed = [confirm_button.click(confirm_suspects, token, [suspects_message, stats],
                                             api_name="confirm_suspects"),
                        discard_button.click(discard_suspects, token, [suspects_message, stats],
                                             api_name="discard_suspects")]
            for event in reviewed:
                clear_on_failure(event, suspects_message)
            for event in [uploaded, *reviewed, *corrected]:
                event.then(service.curation.suspect_gallery, None, suspects, api_name=False)
            if service.settings.review_queue:
                gr.Markdown("Photos production was unsure of or found unfamiliar wait here for a label "
                            "(`CATDOG_REVIEW_QUEUE`): show them, click one, then say what it is.")
                show_to_label = gr.Button("Show photos to label", size="sm")
                to_label = gr.Gallery(label="To label", columns=8, height="auto", interactive=False)
                shown_hashes, chosen_hash = gr.State([]), gr.State(None)
                with gr.Row():
                    label_buttons = [(gr.Button(text, size="sm"), named) for text, named in (
                        ("It's a cat", "cat"), ("It's a dog", "dog"), ("Discard", "discard"))]
                label_message = gr.Markdown()
                waiting = [to_label, shown_hashes, chosen_hash]
                show_to_label.click(photos_to_label, token, waiting, api_name=False)
                to_label.select(choose_photo, shown_hashes, chosen_hash, api_name=False)
                for button, named in label_buttons:
                    labelled = button.click(lambda chosen, secret, named=named: label_photo(chosen, named, secret),
                                            [chosen_hash, token], [label_message, stats], api_name=False)
                    clear_on_failure(labelled, label_message)
                    labelled.then(photos_to_label, token, waiting, api_name=False)
            with gr.Accordion("Data issues: likely label errors, near duplicates and outliers", open=False):
                gr.Markdown("The base data, the confirmed uploads and the trusted photos the gate judges on, as "
                            "production's backbone sees them, ranked by cleanlab; photos decided earlier follow. "
                            "Leave a photo out or give it the other label: nothing is deleted, and the next "
                            "retraining, its gate and `catdog train` follow what you decide.")
                find_issues_button = gr.Button("Find data issues", size="sm")
                issues_summary = gr.Markdown()
                issues_gallery = gr.Gallery(label="Likeliest problems", columns=5, height="auto",
                                            interactive=False)
                issue_hashes, issue_captions, chosen_issue = gr.State([]), gr.State([]), gr.State(None)
                with gr.Row():
                    decision_buttons = [(gr.Button(text, size="sm"), action) for text, action in (
                        ("Leave it out of training", "exclude"), ("Give it the other label", "relabel"),
                        ("Take the decision back", "undo"))]
                decision_message = gr.Markdown()
                found = find_issues_button.click(
                    find_data_issues, token, [issues_gallery, issue_hashes, issue_captions, chosen_issue,
                                              issues_summary], api_name=False)
                clear_on_failure(found, issues_summary)
                issues_gallery.select(choose_photo, issue_hashes, chosen_issue, api_name=False)
                for button, action in decision_buttons:
                    decided = button.click(lambda chosen, secret, action=action: decide_photo(chosen, action, secret),
                                           [chosen_issue, token], decision_message, api_name=False)
                    clear_on_failure(decided, decision_message)
                    decided.success(listed_data_issues, [issue_hashes, issue_captions, token], issues_gallery,
                                    api_name=False)
            fine_tune = gr.Checkbox(label="Fine-tune the backbone too (minutes; without it, a new head on "
                                          "production's backbone in about a minute)", value=False)
            with gr.Row():
                retrain_button = gr.Button("Retrain", variant="primary")
                status_button = gr.Button("Check status")
            retrain_progress = gr.Markdown(label="progress")
            verdict = gr.Markdown(label="verdict")
            comparison = gr.Markdown(label="comparison")
            retrain_log = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False)
            production_text = gr.Markdown(label="production")
            retraining_outputs = [retrain_progress, verdict, comparison, retrain_log, production_text]
            # Not one at a time (Gradio's default): a second click, from any page, is told a retraining runs
            # rather than queued to start another once this one ends.
            retrain_button.click(retrain_and_follow, [fine_tune, token], retraining_outputs,
                                 api_name="retrain_and_follow", concurrency_limit=None,
                                 show_progress_on=retrain_progress)  # the bar covers the progress line, not the log
            status_button.click(retraining_view, None, retraining_outputs, api_name="show_retraining")
            version_box = gr.Textbox(label="Version to promote (e.g. v3)")
            with gr.Row():
                promote_button = gr.Button("Promote")
                rollback_button = gr.Button("Roll back")
            version_message = gr.Markdown(label="message")
            for event in (promote_button.click(promote, [version_box, token], version_message, api_name="promote"),
                          rollback_button.click(rollback, token, version_message, api_name="rollback")):
                clear_on_failure(event, version_message)
                event.then(retraining_view, None, retraining_outputs, api_name=False)
        with gr.Tab("Metrics"):
            with gr.Row():
                window = gr.Radio(list(WINDOWS), value="day", label="Monitoring window (all replicas)")
                refresh = gr.Button("Refresh", variant="primary")
            cards = gr.HTML(label="headline figures")
            summary_text = gr.Markdown(label="summary")
            # Each plot's label names its output for programs (gradio_client); its title, inside it, is what
            # people read. Without predictions in the window, a plot is empty (the cards say "no data yet").
            with gr.Row():
                requests_plot = gr.LinePlot(x="time", y="requests per minute", title="Requests per minute",
                                            label="requests per minute", show_label=False, y_lim=[0, None])
                latency_plot = gr.LinePlot(x="time", y="mean latency (ms)", title="Mean latency (ms)",
                                           label="mean latency", show_label=False, y_lim=[0, None])
            with gr.Row():
                quality_plot = gr.LinePlot(x="time", y="value", color="measure", y_lim=[0, 1],
                                           title="Confidence, unfamiliarity and share flagged",
                                           label="quality over time", show_label=False)
                labels_plot = gr.BarPlot(x="label", y="predictions", title="Labels", y_lim=[0, None],
                                         label="labels", show_label=False)
                confidence_plot = gr.BarPlot(x="confidence", y="predictions", title="Confidence", y_lim=[0, None],
                                             label="confidence histogram", show_label=False, x_label_angle=-45)
            with gr.Row():
                production_table = gr.Dataframe(label="Production on its own test split", interactive=False)
                # The PNGs carry their titles: a label over them would hide them.
                confusion_plot = gr.Image(label="confusion matrix", type="filepath", show_label=False)
                roc_plot = gr.Image(label="ROC curve", type="filepath", show_label=False)
            gr.Markdown("**Versions.** *Accuracy, trusted photos*: every version on the same held-out photos the "
                        "gate judges on — compare these. *Own test split*: each version on its own split, as its "
                        "training measured it — not comparable between versions. *Not measured*: there are no "
                        "trusted photos yet (`CATDOG_BASE_DATA_DIR` or `CATDOG_TRUSTED_DATA_DIR`), or the "
                        "background job has not reached this version (`CATDOG_PREPARE_EMBEDDINGS`). *No serving "
                        "export*: the version's files here lack `model.onnx` (the repository keeps only "
                        "production's); `catdog export --version vN` publishes its weights again as a new, "
                        "servable version (versions are never rewritten).")
            versions_table = gr.Dataframe(label="Versions", interactive=False)
            dataset_table = gr.Dataframe(label="Training data (photos per class)", interactive=False)
            metrics_outputs = [cards, summary_text, production_table, confusion_plot, roc_plot, versions_table,
                               requests_plot, latency_plot, quality_plot, labels_plot, confidence_plot, dataset_table]
            refresh.click(refresh_metrics, window, metrics_outputs, api_name="refresh_metrics")

        # Endpoints for programs, with no UI of their own.
        @gr.api(api_name="metrics")
        def metrics(window: str = "day") -> dict:
            """Production's test metrics, live monitoring and drift over the window (hour, day or all)."""
            return as_gradio_errors(service.dashboard.metrics)(window)

        @gr.api(api_name="versions")
        def versions() -> list[dict]:
            """Every version: production or not, servable or not, created, its own test-split figures."""
            return as_gradio_errors(service.dashboard.versions)()

        @gr.api(api_name="retrain")
        def start_retraining(token: str = "", fine_tune: bool = False) -> dict:
            """Start a retraining in the background (fine_tune: the backbone's top too, minutes); its status."""
            return retrain(token, fine_tune)

        @gr.api(api_name="retrain_status")
        def retrain_status() -> dict:
            """The running (or last) retraining: stage, done, total, seconds_left, log, result and verdict."""
            return as_gradio_errors(service.dashboard.retrain_status)()

        @gr.api(api_name="photos_to_label")
        def hashes_to_label(token: str = "") -> list[str]:
            """The sha256 of each photo waiting for a label (CATDOG_REVIEW_QUEUE; none while it is off)."""
            return photos_to_label(token)[1]

        @gr.api(api_name="label_photo")
        def label_waiting_photo(sha256: str, label: str, token: str = "") -> str:
            """Label a photo waiting for one: cat or dog (it joins training), or discard."""
            return label_photo(sha256, label, token)[0]

        @gr.api(api_name="data_issues")
        def data_issues(token: str = "", top: int = DEFAULT_TOP) -> dict:
            """The likeliest label errors, near duplicates and outliers among the labelled photos (admin)."""
            return as_gradio_errors(data_issues_report)(token, top)

        @gr.api(api_name="decide_photo")
        def decide_about_photo(sha256: str, action: str, token: str = "") -> str:
            """Keep a decision about a labelled photo: exclude, relabel (the other label) or undo (admin)."""
            return decide_photo(sha256, action, token)

        @gr.api(api_name="dataset_stats")
        def dataset_stats() -> dict:
            """Photos per class: base data, uploads, suspects held for review, and the total."""
            return as_gradio_errors(service.curation.dataset_stats)()

        demo.load(refresh_metrics, window, metrics_outputs, api_name=False)
        demo.load(retraining_view, None, retraining_outputs, api_name=False)
        demo.load(service.curation.suspect_gallery, None, suspects, api_name=False)
    return demo


def clear_on_failure(event, message: gr.Markdown) -> None:
    """An action that fails clears its message line, so that an old success is not read beside the error."""
    event.failure(lambda: "", None, message, api_name=False, queue=False)


def build_app(service: Service) -> FastAPI:
    demo = build_demo(service)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        pruning = asyncio.create_task(forget_finished_sessions(demo))
        yield
        pruning.cancel()
        service.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> JSONResponse:  # on the event loop: it answers even while every worker thread is busy
        # 503 until a model is loaded, so load balancers and Docker's HEALTHCHECK skip a replica that can't serve.
        body = service.health()
        return JSONResponse(body, status_code=200 if body["model_loaded"] else 503)

    @app.get("/api/status")
    def status() -> dict:
        body = service.dashboard.status()
        return {**body, "load_error": body["load_error"] and public_message(body["load_error"])}

    @app.post("/api/predict")
    async def predict_rest(file: UploadFile = File(...)) -> JSONResponse:
        """One multipart POST (field `file`), JSON back: the fast path for scripts and load tests."""
        return await rest_prediction(service, file)

    @app.get("/api/predict")
    async def predict_rest_help() -> JSONResponse:
        logger.info("refused GET /api/predict: it takes a POST")
        return JSONResponse({"error": REST_USAGE}, status_code=405, headers={"Allow": "POST"})

    @app.exception_handler(RequestValidationError)
    async def malformed_request(request, error) -> JSONResponse:
        logger.info("refused %s: the request did not have the form it needs", request.url.path)
        return JSONResponse({"error": REST_USAGE}, status_code=400)

    app.add_middleware(CheckedCalls, blocks=demo)
    # The multipart form's own framing adds a few hundred bytes to the file.
    app.add_middleware(RequestBodyLimit, path="/api/predict", max_bytes=service.settings.max_upload_mb * 2**20 + 2**16,
                       message=too_large_message(service.settings.max_upload_mb))
    if service.settings.open_on_loopback:
        # Added last, so it runs first.
        app.add_middleware(LoopbackHostOnly, port=service.settings.server_port,
                           server_name=service.settings.server_name)
    # Gradio keeps a copy of the app's config for every session, and every API call is a new session: at its
    # default of 10,000 sessions that is over a gigabyte. A few hundred recent sessions are plenty here.
    demo.state_session_capacity = SESSION_CAPACITY
    # show_error=False: only catdog's own sentences (gr.Error) reach a client, never an unexpected exception's text.
    app = gr.mount_gradio_app(app, demo, path="/", show_error=False,
                              max_file_size=service.settings.max_upload_mb * 1024 * 1024)
    share_session_config(demo)  # every API call is a new session: entering one must not cost a config build
    return app


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="catdog serve", description="Serve the app on the production model, on "
                            "GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (127.0.0.1:7860); every setting is an "
                            "environment variable (docs/configuration.md).").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with cli.user_errors():  # a setting that cannot work ends the start with its sentence, not a traceback
        settings = Settings.from_env()
        service = Service(settings).start()
    # A client that keeps a connection open (an event stream, a gradio_client's heartbeat) must not hold a stop
    # (SIGTERM, docker stop) past its grace period: open connections get this long, then close.
    uvicorn.run(build_app(service), host=settings.server_name, port=settings.server_port,
                timeout_graceful_shutdown=settings.shutdown_grace_seconds)
