"""cifar_tl.training.logistic_probe: frozen pooled features, and scikit-learn's logistic regression fitted on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_tl.models.backbones import create_model
from cifar_tl.training.logistic_probe import probe_chosen_on_validation, probe_features, sklearn_probe
from cifar_tl.training.recipes import RECIPES, Stage


def test_probe_features_are_the_bodys_pooled_features_in_eval_mode():
    torch.manual_seed(0)
    model = create_model("simple_cnn", 3, pretrained=False)
    model.train()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    features = probe_features(model, images, 32, device="cpu", batch_size=2)
    assert features.shape == (5, model.head.in_features) and features.dtype == np.float32
    assert model.training  # the mode it was in is restored
    from cifar_tl.data.augment import prepare

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


def _blobs(rng, centres, n, noise):
    labels = np.repeat(np.arange(len(centres)), n)
    return centres[labels] + rng.normal(scale=noise, size=(len(labels), centres.shape[1])), labels


def test_the_probes_penalty_is_chosen_on_validation_and_the_test_set_read_once():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 30))
    train, val, test = (_blobs(rng, centres, n, 2.0) for n in (8, 30, 50))
    grid = [10.0, 0.1, 0.001]
    chosen = probe_chosen_on_validation(train, val, test, grid)
    by_c = {c: sklearn_probe(*train, *val, C=c)[0] for c in grid}
    assert chosen["val_accuracy_by_C"] == [by_c[c] for c in grid]
    assert chosen["C"] == max(grid, key=by_c.get) and chosen["val_accuracy"] == max(by_c.values())
    assert chosen["test_accuracy"] == sklearn_probe(*train, *test, C=chosen["C"])[0]
    # Other test labels change the test accuracy, never the choice: the test set does not pick a setting.
    shuffled = probe_chosen_on_validation(train, val, (test[0], rng.permutation(test[1])), grid)
    assert (shuffled["C"], shuffled["val_accuracy_by_C"]) == (chosen["C"], chosen["val_accuracy_by_C"])
    assert shuffled["test_accuracy"] < chosen["test_accuracy"]


def test_only_a_head_only_recipe_can_ask_for_the_sklearn_probe():
    from dataclasses import replace

    probe = RECIPES["linear_probe"]
    assert probe.sklearn_probe and all(stage.train == "head" for stage in probe.stages)
    with pytest.raises(ValueError, match="trains only the head"):
        replace(probe, stages=(Stage(epochs=1, lr=1e-3, train="all"),))
    with pytest.raises(ValueError, match="trains only the head"):
        replace(probe, augment="crop_flip")
    with pytest.raises(ValueError, match="positive values of C"):
        replace(probe, sklearn_probe=(1.0, 0.0))
    assert all(r.sklearn_probe is None for name, r in RECIPES.items() if name != "linear_probe")


def test_cross_validation_chooses_c_from_the_training_features_alone():
    """Without a validation split: C by stratified k-fold cross-validation over the labelled training features,
    then one probe on all of them; the test labels never move the choice."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression

    from cifar_tl.training.logistic_probe import probe_chosen_by_cross_validation

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 30))
    train, test = (_blobs(rng, centres, n, 2.5) for n in (20, 50))
    grid = [10.0, 0.1, 0.001]
    chosen = probe_chosen_by_cross_validation(train, test, grid, folds=4)
    folds = StratifiedKFold(4, shuffle=True, random_state=0)
    by_c = [cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)), *train,
                            cv=folds).mean() for c in grid]
    assert chosen["cv_accuracy_by_C"] == pytest.approx(by_c)
    assert chosen["C"] == grid[int(np.argmax(by_c))] and chosen["folds"] == 4
    assert chosen["test_accuracy"] == sklearn_probe(*train, *test, C=chosen["C"])[0]
    shuffled = probe_chosen_by_cross_validation(train, (test[0], rng.permutation(test[1])), grid, folds=4)
    assert (shuffled["C"], shuffled["cv_accuracy_by_C"]) == (chosen["C"], chosen["cv_accuracy_by_C"])
    # a class with fewer images than folds: that many folds; with one image, no cross-validation at all
    few = (train[0][:8], np.array([0, 0, 1, 1, 2, 2, 3, 3]))
    assert probe_chosen_by_cross_validation(few, test, grid)["folds"] == 2
    assert probe_chosen_by_cross_validation((few[0][:4], np.array([0, 1, 2, 3])), test, grid) is None
