"""The demo app's examples: real test images, one per class with its true label, from the data the
checkpoints were trained on; drawn shapes only when that data is not at hand. (The app itself runs in a
browser in test_browser.py.)"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cifar_tl.app import example_images, trained_on, write_examples
from cifar_tl.data.sources import load_dataset

CLASSES = ["apple", "banana", "cherry"]  # conftest's tiny_dataset


def info_for(dataset, **summary) -> dict:
    """A loaded checkpoint's information, as far as the examples look at it."""
    record = {"data_name": dataset.identity["name"], "data_checksum": dataset.identity["checksum"], **summary}
    return {"classes": list(dataset.classes), "record": record}


def test_examples_are_one_test_image_per_class_with_its_true_label(tiny_dataset, monkeypatch):
    dataset = load_dataset(tiny_dataset, progress=False)
    monkeypatch.setenv("CIFAR_TL_DATA", str(tiny_dataset))  # resolved as everywhere: $CIFAR_TL_DATA
    examples, name = example_images([info_for(dataset)])
    assert name == dataset.name
    assert [caption for caption, _ in examples] == CLASSES
    for c, (_, pixels) in enumerate(examples):
        first = np.flatnonzero(dataset.test_labels == c)[0]
        assert np.array_equal(pixels, dataset.test_images[first])
    assert example_images([info_for(dataset)], data=str(tiny_dataset))[1] == name  # or given directly


def test_same_data_by_checksum_or_by_name_and_always_the_same_classes(tiny_dataset):
    dataset = load_dataset(tiny_dataset, progress=False)
    assert trained_on(dataset, [info_for(dataset)])
    assert trained_on(dataset, [info_for(dataset, data_checksum=None)])  # saved before checksums: its name
    assert trained_on(dataset, [info_for(dataset, data_name="renamed")])  # the same bytes under another name
    assert not trained_on(dataset, [info_for(dataset, data_name="other", data_checksum="sha256:other")])
    reordered = {**info_for(dataset), "classes": CLASSES[::-1]}
    assert not trained_on(dataset, [info_for(dataset), reordered])  # a label must mean the same to every model


def test_other_data_or_no_data_gives_drawn_shapes_and_says_why(tiny_dataset, make_class_folders, tmp_path, capsys):
    dataset = load_dataset(tiny_dataset, progress=False)
    other = make_class_folders(classes=3, per_class=2, test_per_class=1)
    examples, name = example_images([info_for(dataset)], data=str(other))
    assert name is None and [c for c, _ in examples] == [f"synthetic {i}" for i in range(1, 5)]
    assert "is not the data the checkpoints were trained on" in capsys.readouterr().err
    examples, name = example_images([info_for(dataset)], data=str(tmp_path / "missing"))
    assert name is None and len(examples) == 4
    assert "the checkpoints' data is not at hand" in capsys.readouterr().err


def test_write_examples_enlarges_small_images_for_display(tmp_path):
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    paths = write_examples(tmp_path, [("a cat/dog", pixels), ("ship", pixels)])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["00-a_cat_dog.png", "01-ship.png"]
    with Image.open(paths[0]) as image:
        assert image.size == (128, 128)
