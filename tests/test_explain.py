"""The heat map behind "Show why": Grad-CAM from the serving export's feature map and the head's gradient,
computed in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from catdog_model.config import Settings
from catdog_model.explain import Head, overlay
from catdog_model.hub import LocalHub
from catdog_model.serving import ServingModel
from catdog_model.cli_explain import centre_rate, explain_photos
from tests.conftest import PRODUCTION, requires_photos, shipped_models


def production_model() -> ServingModel:
    hub = LocalHub(shipped_models(), Settings.from_env().model_name)
    return ServingModel.load(hub.download(hub.production()), hub.production())


def test_the_head_gradient_is_the_derivative_of_its_logit():
    generator = np.random.default_rng(0)
    head = Head([(generator.normal(size=(16, 8)), generator.normal(size=8)),
                 (generator.normal(size=(8, 1)), generator.normal(size=1))])

    def logit(embedding):
        hidden = np.maximum(embedding @ head.layers[0][0] + head.layers[0][1], 0)
        return float(hidden @ head.layers[1][0][:, 0] + head.layers[1][1][0])

    embedding, step = generator.normal(size=16), 1e-6
    numerical = [(logit(embedding + step * unit) - logit(embedding - step * unit)) / (2 * step)
                 for unit in np.eye(16)]
    np.testing.assert_allclose(head.logit_gradient(embedding), numerical, rtol=1e-4, atol=1e-6)


def test_the_head_in_numpy_answers_as_the_versions_keras_head_does():
    from catdog_model.served_backbone import ServedBackbone

    folder = LocalHub(shipped_models(), Settings.from_env().model_name).download(PRODUCTION)
    keras_head = ServedBackbone(folder).head()
    embeddings = np.random.default_rng(0).gamma(1.0, 0.5, size=(64, keras_head.input_shape[-1])).astype("float32")
    np.testing.assert_allclose(Head.load(folder).p_dog(embeddings), keras_head.predict(embeddings, verbose=0)[:, 0],
                               atol=1e-5)


def test_the_overlay_is_red_towards_dog_blue_towards_cat_and_clear_where_neither():
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    layered = overlay(grey, np.array([[1.0, -1.0], [0.0, 0.0]])).astype(int)
    top_left, top_right, bottom = layered[4, 4], layered[4, 60], layered[60, 32]
    assert top_left[0] > 128 + 40 and top_left[2] < 128
    assert top_right[2] > 128 + 40 and top_right[0] < 128
    assert np.abs(bottom - 128).max() <= 2


@requires_photos
def test_on_real_photos_the_hardest_push_is_on_the_animal_more_often_than_not(small_photo_dir):
    model = production_model()
    photos = [path.read_bytes() for folder in ("cats", "dogs")
              for path in sorted((small_photo_dir / folder).iterdir())[:12]]
    explanations = explain_photos(model, photos)

    assert centre_rate(explanations) > 0.5  # a map of noise peaks in the centre box ~31 % of the time
    for photo, explanation in zip(photos[:3], explanations):
        plain = model.predict_one(photo)
        assert explanation.prediction.label == plain.label
        assert explanation.prediction.p_dog == pytest.approx(plain.p_dog, abs=1e-6)
        layered = explanation.overlay()
        assert layered.shape == explanation.image.shape and layered.dtype == np.uint8
        assert np.abs(layered.astype(int) - explanation.image).mean() > 5  # the map is visible on the photo
