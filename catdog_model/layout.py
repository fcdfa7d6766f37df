"""A model repository's file names, in one place: what the hub stores knows nothing else of the model.

    <models>/<model name>/
        refs.json            the production alias and the versions it pointed to before (REFS_FILE)
        vN/
            config.json      what a version is: backbone, head, preprocessing, TTA (CONFIG_FILE; marks a version)
            README.md        the model card, written when the version is pushed (CARD_FILE)
            metrics.json     test metrics, data, training history (METRICS_FILE)
            history.json     the training's loss and accuracy epoch by epoch (HISTORY_FILE)
            model.onnx       the serving export: image in, p(dog) and the embedding out (ONNX_FILE)
            model.int8.onnx  the same, quantized to int8; optional (INT8_ONNX_FILE)
            head.weights.h5  the head's Keras weights (HEAD_WEIGHTS_FILE)
            model.keras      backbone and head, for a fine-tuned version or on the Hugging Face Hub (FULL_MODEL_FILE)
            novelty.npz      the training embeddings' summary for the *unfamiliar* flag (NOVELTY_FILE)
"""

REFS_FILE = "refs.json"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
HEAD_WEIGHTS_FILE = "head.weights.h5"
FULL_MODEL_FILE = "model.keras"
NOVELTY_FILE = "novelty.npz"
