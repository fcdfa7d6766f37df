"""catdog: a cats-vs-dogs classifier — frozen ImageNet MobileNetV2 backbone, trained head, versioned hub."""

import os

# Before TensorFlow is first imported: Keras on TensorFlow, and no wall of C++ start-up logs.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("cat", "dog")
