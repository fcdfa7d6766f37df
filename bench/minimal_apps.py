"""The ceilings catdog is measured against, on the same machine in the same run:

    python -m bench.minimal_apps gradio --port 7861      # one Gradio endpoint, file in, constant label out
    python -m bench.minimal_apps fastapi --port 7862 --model models/catdog-mobilenetv2/v5/model.onnx
                                                       # one multipart POST: decode + one ONNX Runtime call

Both answer GET /health like catdog, so bench.loadtest starts and waits for them the same way.
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI, File, UploadFile


def health_app() -> FastAPI:
    app = FastAPI()
    app.get("/health")(lambda: {"model_loaded": True})
    return app


def minimal_gradio() -> FastAPI:
    """Gradio's defaults, mounted on FastAPI as catdog is: the least one Gradio prediction can cost here."""
    import gradio as gr

    with gr.Blocks() as demo:
        image, label = gr.File(type="filepath"), gr.Label()
        gr.Button().click(lambda path: {"cat": 0.5, "dog": 0.5}, image, label, api_name="predict",
                          concurrency_limit=None)
    return gr.mount_gradio_app(health_app(), demo, path="/")


def minimal_fastapi(model: str) -> FastAPI:
    """The model served the plainest way: decode, one ONNX Runtime call, JSON."""
    import numpy as np

    from catdog_model.images import load_image
    from catdog_model.serving import onnx_session

    session = onnx_session(model, threads=1)
    size = session.get_inputs()[0].shape[1]
    app = health_app()

    @app.post("/api/predict")
    def predict(file: UploadFile = File(...)) -> dict:
        image = load_image(file.file.read(), size=size)
        p_dog = float(session.run(["p_dog"], {"image": image[np.newaxis]})[0][0])
        return {"label": "dog" if p_dog >= 0.5 else "cat", "p_cat": 1 - p_dog, "p_dog": p_dog}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.minimal_apps", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["gradio", "fastapi"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7861")))
    parser.add_argument("--model", help="model.onnx, for fastapi")
    arguments = parser.parse_args()
    app = minimal_gradio() if arguments.kind == "gradio" else minimal_fastapi(arguments.model)
    uvicorn.run(app, host="127.0.0.1", port=arguments.port, log_level="warning")


if __name__ == "__main__":
    main()
