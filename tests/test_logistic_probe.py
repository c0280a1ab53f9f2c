"""cifar_tl.logistic_probe: frozen pooled features, and scikit-learn's logistic regression fitted on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_tl.backbones import create_model
from cifar_tl.logistic_probe import probe_features, sklearn_probe


def test_probe_features_are_the_bodys_pooled_features_in_eval_mode():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, pretrained=False)
    model.train()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    features = probe_features(model, images, 32, device="cpu", batch_size=2)
    assert features.shape == (5, model.head.in_features) and features.dtype == np.float32
    assert model.training  # the mode it was in is restored
    from cifar_tl.augment import prepare

    model.eval()
    with torch.no_grad():
        expected = model.body(prepare(torch.as_tensor(images), 32, model.mean, model.std)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_sklearn_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4

    def draw(n):
        labels = np.repeat(np.arange(3), n)
        return centres[labels] + rng.normal(size=(len(labels), 8)), labels

    (x_train, y_train), (x_test, y_test) = draw(10), draw(20)
    accuracy, model = sklearn_probe(x_train, y_train, x_test, y_test, C=1.0)
    assert accuracy == pytest.approx(1.0)
    assert model.predict(x_test).tolist() == y_test.tolist()
    weak, _ = sklearn_probe(x_train, y_train, x_test, rng.permutation(y_test), C=1.0)
    assert weak < 0.8  # labels shuffled: the score is not given away
