"""catdog: a cats-vs-dogs classifier — an ImageNet MobileNetV2 backbone (frozen, or fine-tuned with the head), a
trained head, served on ONNX Runtime from a versioned hub."""

import os

# Before TensorFlow is first imported: Keras on TensorFlow, and no wall of C++ start-up logs.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("cat", "dog")
