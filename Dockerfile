FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    CATDOG_DATA_DIR=/app/data

# requirements.txt serves and retrains (a Space, one container); serving replicas build with
# --build-arg REQUIREMENTS=requirements-serve.txt: no TensorFlow (deploy/docker-compose.yml).
ARG REQUIREMENTS=requirements.txt
WORKDIR /app
COPY requirements*.txt ./
RUN pip install -r "$REQUIREMENTS"

# The data folder is made for the user the app runs as: it holds uploads, caches and the prediction log.
RUN useradd --create-home --uid 1000 catdog && install -d -o catdog -g catdog "$CATDOG_DATA_DIR"
COPY --chown=catdog:catdog . .
USER catdog

EXPOSE 7860
# /health answers 503 until the production model is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['GRADIO_SERVER_PORT']}/health\", timeout=4)"]
CMD ["python", "app.py"]
