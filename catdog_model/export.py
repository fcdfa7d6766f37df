"""The serving export: the whole model (backbone + head) as model.onnx, checked against Keras before a version
is written. uint8 images (N, size, size, 3) in; p_dog (N,), the pooled embedding (N, dim) — the *unfamiliar*
flag needs it — and the last convolutional feature map (N, h, w, dim) out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .classifier import Classifier
from .errors import CatdogError
from .layout import ONNX_FILE
ONNX_OPSET = 17
MAX_P_DOG_DIFFERENCE = 1e-4
FEATURE_MAP_LAYER = "out_relu"  # MobileNetV2's last convolutional activation, before pooling


class ExportError(CatdogError, RuntimeError):
    """The export does not give the Keras model's answers; the version is not written."""


def sample_images(size: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Images to compare the two runtimes on: noise, flat colours and gradients, fixed by the seed."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    images[1] = 128
    images[2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :, None]
    return images


def export_onnx(classifier: Classifier, directory: Path) -> Path:
    """Write directory/model.onnx from the Keras model and check it; raises ExportError if they disagree."""
    import keras
    import tensorflow as tf
    import tf2onnx

    backbone = classifier.backbone.model
    rescaling = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Rescaling))
    base = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    features = keras.Model(base.input, [base.get_layer(FEATURE_MAP_LAYER).output, base.output])
    size = classifier.spec.image_size

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name="image")])
    def serve(image):
        feature_map, embedding = features(rescaling(tf.cast(image, tf.float32)), training=False)
        p_dog = classifier.head(embedding, training=False)[:, 0]
        if classifier.tta:
            _, mirrored = features(rescaling(tf.cast(tf.reverse(image, axis=[2]), tf.float32)), training=False)
            p_dog = (p_dog + classifier.head(mirrored, training=False)[:, 0]) / 2
        return {"p_dog": p_dog, "embedding": embedding, "feature_map": feature_map}

    path = Path(directory) / ONNX_FILE
    tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET,
                                  output_path=str(path))
    check_export(classifier, path)
    return path


def check_export(classifier: Classifier, path: Path) -> float:
    """The largest |Δ p(dog)| between Keras and the export on sample images; ExportError above the limit."""
    from .serving import onnx_session

    images = sample_images(classifier.spec.image_size)
    expected, _ = classifier.predict_arrays(images)
    session = onnx_session(path, threads=0)
    exported = session.run(["p_dog"], {"image": images})[0]
    difference = float(np.abs(exported - expected).max())
    if not difference < MAX_P_DOG_DIFFERENCE:
        raise ExportError(f"The ONNX export differs from the Keras model by up to {difference:.2g} in p(dog) "
                          f"(the limit is {MAX_P_DOG_DIFFERENCE:g}); the version was not written.")
    return difference
