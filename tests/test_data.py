"""Data: class-balanced subsets, the capped test set, class-folder sources and the decoded cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_tl.core.errors import UserError
from cifar_tl.core.files import sha256_file
from cifar_tl.data.sources import JPEG_COPY_NAME, JPEG_COPY_SHA256, MIXED_STORE_SIZE, load_dataset, source_checksum
from cifar_tl.data.subsets import balanced_subset, capped_test, indices_hash
import cifar_tl.data.sources as data_module

# 4 classes, 50 images each, interleaved: the synthetic pool for the pinned subset below.
SYNTHETIC_LABELS = np.arange(200) % 4
# indices_hash of balanced_subset(SYNTHETIC_LABELS, 10, 5, seed=0), computed once. NumPy's PCG64 is
# the same on every platform: if this changes, the same seed no longer names the same subset.
SYNTHETIC_SEED0_TRAIN_HASH = "f7b74b813b4c0ac2"
SYNTHETIC_SEED0_VAL_HASH = "5da9054d590bd276"
# The same for CIFAR-10's layout, whichever copy holds it: a class-folder copy decodes to its labels in class
# order (5,000 training and 1,000 test images a class), so these pins are of the labels alone, not of one
# archive file: the book's 100-per-class subset of seed 0 (50 val per class), and the smoke profile's
# 500-image test cap.
CIFAR_TRAIN_LABELS = np.repeat(np.arange(10), 5000)
CIFAR_TEST_LABELS = np.repeat(np.arange(10), 1000)
CIFAR_SEED0_TRAIN_HASH = "1c52f2eb3e65b3e5"
CIFAR_SEED0_VAL_HASH = "2057e522fb4b5d19"
CIFAR_TEST500_HASH = "4f456e875ddadd4e"


def _per_class_counts(labels, indices, n_classes):
    return np.bincount(labels[indices], minlength=n_classes)


# -- balanced_subset ----------------------------------------------------------------------------------


def test_balanced_subset_takes_exactly_per_class_of_every_class():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, size=600)  # unequal class sizes, shuffled
    train, val = balanced_subset(labels, per_class=7, val_per_class=3, seed=0)
    assert _per_class_counts(labels, train, 6).tolist() == [7] * 6
    assert _per_class_counts(labels, val, 6).tolist() == [3] * 6
    assert len(np.unique(train)) == len(train) and len(np.unique(val)) == len(val)


def test_balanced_subset_is_reproducible_and_pinned():
    train_a, val_a = balanced_subset(SYNTHETIC_LABELS, 10, 5, seed=0)
    np.random.seed(123)  # global NumPy state must not matter
    train_b, val_b = balanced_subset(SYNTHETIC_LABELS, 10, 5, seed=0)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(val_a, val_b)
    assert indices_hash(train_a) == SYNTHETIC_SEED0_TRAIN_HASH
    assert indices_hash(val_a) == SYNTHETIC_SEED0_VAL_HASH


def test_balanced_subset_seeds_differ():
    train0, val0 = balanced_subset(SYNTHETIC_LABELS, 10, 5, seed=0)
    train1, val1 = balanced_subset(SYNTHETIC_LABELS, 10, 5, seed=1)
    assert not np.array_equal(train0, train1)
    assert not np.array_equal(val0, val1)
    assert indices_hash(train0) != indices_hash(train1)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_and_val_are_disjoint_and_from_the_training_pool(seed):
    labels = np.repeat(np.arange(5), 20)
    train, val = balanced_subset(labels, 12, 8, seed=seed)  # takes every image of every class
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert train.min() >= 0 and max(train.max(), val.max()) < len(labels)
    # sorted, int indices into the training labels
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert train.dtype.kind == "i" and val.dtype.kind == "i"


def test_balanced_subset_too_large_names_the_class():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 9)
    with pytest.raises(UserError, match="'bird'") as info:
        balanced_subset(labels, 5, 5, seed=0, classes=["cat", "dog", "bird"])
    assert "9" in str(info.value) and "10" in str(info.value)
    with pytest.raises(UserError, match="class '2'"):
        balanced_subset(labels, 5, 5, seed=0)


@pytest.mark.parametrize("per_class, val_per_class", [(0, 5), (-1, 5), (5, -1)])
def test_balanced_subset_rejects_bad_counts(per_class, val_per_class):
    with pytest.raises(UserError):
        balanced_subset(SYNTHETIC_LABELS, per_class, val_per_class, seed=0)


def test_the_books_cifar10_subset_is_pinned():
    """Seed 0 names the same 1,000 + 500 images of CIFAR-10 on every machine (labels in class order)."""
    train, val = balanced_subset(CIFAR_TRAIN_LABELS, 100, 50, seed=0)
    assert indices_hash(train) == CIFAR_SEED0_TRAIN_HASH
    assert indices_hash(val) == CIFAR_SEED0_VAL_HASH
    assert indices_hash(capped_test(CIFAR_TEST_LABELS, 500)) == CIFAR_TEST500_HASH


def test_real_archive_subset_is_pinned_and_from_the_training_split(cifar_jpeg):
    labels = cifar_jpeg.train_labels
    np.testing.assert_array_equal(labels, CIFAR_TRAIN_LABELS)  # CIFAR-10's layout: the pins above apply to it
    train, val = balanced_subset(labels, 100, 50, seed=0, classes=cifar_jpeg.classes)
    assert _per_class_counts(labels, train, 10).tolist() == [100] * 10
    assert _per_class_counts(labels, val, 10).tolist() == [50] * 10
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert max(train.max(), val.max()) < len(labels) == 50000
    assert indices_hash(train) == CIFAR_SEED0_TRAIN_HASH
    assert indices_hash(val) == CIFAR_SEED0_VAL_HASH


# -- capped_test --------------------------------------------------------------------------------------


def test_capped_test_is_class_balanced_and_seed_independent():
    labels = np.random.default_rng(3).integers(0, 4, size=400)
    np.random.seed(0)
    first = capped_test(labels, 40)
    np.random.seed(99)
    torch.manual_seed(99)
    second = capped_test(labels, 40)
    np.testing.assert_array_equal(first, second)
    assert _per_class_counts(labels, first, 4).tolist() == [10] * 4
    assert len(np.unique(first)) == 40 and np.all(np.diff(first) > 0)


def test_capped_test_without_a_cap_is_everything():
    labels = np.arange(30) % 3
    np.testing.assert_array_equal(capped_test(labels, None), np.arange(30))
    np.testing.assert_array_equal(capped_test(labels, 30), np.arange(30))
    np.testing.assert_array_equal(capped_test(labels, 1000), np.arange(30))


def test_capped_test_below_the_class_count_is_an_error():
    with pytest.raises(UserError, match="test-limit"):
        capped_test(np.arange(30) % 3, 2)


def test_capped_test_on_the_real_archive(cifar_jpeg):
    np.testing.assert_array_equal(cifar_jpeg.test_labels, CIFAR_TEST_LABELS)
    picks = capped_test(cifar_jpeg.test_labels, 500)
    assert _per_class_counts(cifar_jpeg.test_labels, picks, 10).tolist() == [50] * 10
    assert indices_hash(picks) == CIFAR_TEST500_HASH


# -- class-folder sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar.gz"])
@pytest.mark.parametrize("test_split", ["test", "val"])
def test_class_folders_load(make_class_folders, make_tar_gz, packed, test_split):
    root = make_class_folders(classes=3, per_class=4, test_per_class=2, test_split=test_split, solid=True)
    source = make_tar_gz(root) if packed else root
    dataset = load_dataset(source, progress=False)
    assert dataset.classes == ["class0", "class1", "class2"]
    assert dataset.train_images.shape == (12, 32, 32, 3) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (6, 32, 32, 3)
    assert dataset.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert dataset.train_labels.dtype == np.int64
    # the pixels are the ones written (PNG is lossless): class c is one flat colour
    for images, labels in ((dataset.train_images, dataset.train_labels), (dataset.test_images, dataset.test_labels)):
        for image, label in zip(images, labels):
            assert image[0, 0].tolist() == [(label * 80 + 10) % 256, 100, 200]
            assert (image == image[0, 0]).all()
    identity = dataset.identity
    assert identity["test_split"] == test_split
    assert identity["kind"] == ("class-folder archive" if packed else "class-folder directory")
    assert identity["checksum"] == source_checksum(str(source))
    assert identity["train_pool"] == 12 and identity["test_total"] == 6
    assert identity["image_shape"] == [32, 32, 3]
    assert identity["skipped_files"] == 0
    assert identity["note"] is None and "JPEG" not in identity["name"]


def test_archive_with_a_top_level_folder_loads(make_class_folders, make_tar_gz, tmp_path):
    root = make_class_folders(classes=2, per_class=2, test_per_class=1)
    archive = make_tar_gz(root, tmp_path / "wrapped.tar.gz", prefix="mydata")
    dataset = load_dataset(archive, progress=False)
    assert dataset.classes == ["class0", "class1"]
    assert len(dataset.train_labels) == 4 and len(dataset.test_labels) == 2


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar.gz"])
def test_mixed_sizes_are_stored_as_squares_and_non_images_skipped(make_class_folders, make_tar_gz, packed):
    root = make_class_folders(
        classes=2, per_class=3, test_per_class=2, sizes=[(40, 30), (64, 64), (20, 50)],
        formats=("png", "jpg"), non_image=True, solid=True,
    )
    source = make_tar_gz(root) if packed else root
    dataset = load_dataset(source, progress=False)
    side = MIXED_STORE_SIZE
    assert dataset.train_images.shape == (6, side, side, 3)
    assert dataset.test_images.shape == (4, side, side, 3)
    assert dataset.identity["image_shape"] == [side, side, 3]
    assert dataset.identity["skipped_files"] == 1  # train/class0/notes.txt
    assert dataset.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    # a flat colour stays (nearly, for JPEG) that colour after the crop and resize
    for image, label in zip(dataset.train_images, dataset.train_labels):
        expected = np.array([(label * 80 + 10) % 256, 100, 200])
        assert np.abs(image.reshape(-1, 3).mean(0) - expected).max() < 4


def test_large_photos_are_shrunk_on_decode(make_class_folders):
    root = make_class_folders(classes=2, per_class=2, test_per_class=1, sizes=[(300, 450)], solid=True)
    dataset = load_dataset(root, progress=False)
    # the shorter side is scaled down to MIXED_STORE_SIZE, keeping the aspect ratio
    assert dataset.train_images.shape == (4, 336, MIXED_STORE_SIZE, 3)


def test_grayscale_and_rgba_images_become_rgb(make_class_folders):
    root = make_class_folders(classes=2, per_class=1, test_per_class=1, solid=True)
    Image.new("L", (32, 32), 77).save(root / "train" / "class0" / "gray.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 128)).save(root / "train" / "class1" / "alpha.png")
    dataset = load_dataset(root, progress=False)
    assert dataset.train_images.shape == (4, 32, 32, 3)
    assert dataset.train_images[1, 0, 0].tolist() == [77, 77, 77]  # class0: 0000.png, gray.png
    assert dataset.train_images[3, 0, 0].tolist() == [1, 2, 3]


def test_real_archive_identity_says_jpeg_copy(cifar_jpeg, jpeg_archive):
    """The archive's identity is its own checksum; it is called the JPEG q75 copy exactly when it is that
    file (the one ../shared/data holds), and any other copy of CIFAR-10 in class folders is not."""
    identity = cifar_jpeg.identity
    checksum = sha256_file(jpeg_archive)
    assert identity["checksum"] == f"sha256:{checksum}"
    if checksum == JPEG_COPY_SHA256:
        assert identity["name"] == JPEG_COPY_NAME
        assert "JPEG q75" in identity["name"] and "JPEG q75" in identity["note"]
    else:
        assert "JPEG" not in identity["name"] and identity["note"] is None
    assert identity["kind"] == "class-folder archive"
    assert identity["classes"] == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]
    assert cifar_jpeg.train_images.shape == (50000, 32, 32, 3)
    assert cifar_jpeg.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(cifar_jpeg.train_labels).tolist() == [5000] * 10
    assert np.bincount(cifar_jpeg.test_labels).tolist() == [1000] * 10
    assert identity["skipped_files"] == 0 and identity["test_split"] == "test"


# -- errors ---------------------------------------------------------------------------------------------


def test_missing_path_is_a_user_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(missing, progress=False)


def test_a_file_that_is_not_an_archive_is_a_user_error(tmp_path):
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="not a .tar.gz"):
        load_dataset(path, progress=False)


def test_truncated_archive_is_a_user_error(make_class_folders, make_tar_gz, tmp_path):
    archive = make_tar_gz(make_class_folders(classes=2, per_class=4, test_per_class=2))
    payload = archive.read_bytes()
    half = tmp_path / "half.tar.gz"
    half.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset(half, progress=False)


def test_garbage_archive_is_a_user_error(tmp_path):
    path = tmp_path / "garbage.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08" + b"this is not gzip data" * 50)
    with pytest.raises(UserError, match="not a readable archive"):
        load_dataset(path, progress=False)


def test_folder_without_splits_is_a_user_error(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "flat" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / name / "a.png")
    with pytest.raises(UserError, match="train/<class>"):
        load_dataset(tmp_path / "flat", progress=False)


def test_folder_with_train_but_no_test_is_a_user_error(make_class_folders):
    root = make_class_folders(classes=2, per_class=2, test_per_class=1, test_split="other")
    with pytest.raises(UserError, match=r"found splits: \['train'\]"):
        load_dataset(root, progress=False)


def test_one_class_is_a_user_error(make_class_folders):
    root = make_class_folders(classes=1, per_class=3, test_per_class=1)
    with pytest.raises(UserError, match="at least two"):
        load_dataset(root, progress=False)


def test_class_folder_without_readable_images_is_a_user_error(make_class_folders):
    root = make_class_folders(classes=3, per_class=2, test_per_class=1)
    for file in (root / "train" / "class1").iterdir():
        file.unlink()
    (root / "train" / "class1" / "readme.txt").write_text("nothing here")
    with pytest.raises(UserError, match="train/class1/ holds no readable images"):
        load_dataset(root, progress=False)


def test_empty_class_folder_in_one_split_is_a_user_error(make_class_folders):
    root = make_class_folders(classes=2, per_class=2, test_per_class=1)
    (root / "train" / "class2").mkdir()
    (root / "test" / "class2").mkdir()
    Image.new("RGB", (32, 32)).save(root / "test" / "class2" / "a.png")
    with pytest.raises(UserError, match="class2"):
        load_dataset(root, progress=False)


def test_empty_class_folder_in_both_splits_is_a_user_error(make_class_folders):
    root = make_class_folders(classes=2, per_class=2, test_per_class=1)
    (root / "train" / "class2").mkdir()
    (root / "test" / "class2").mkdir()
    with pytest.raises(UserError, match="class2"):
        load_dataset(root, progress=False)


def test_classes_differing_between_splits_is_a_user_error(make_class_folders):
    root = make_class_folders(
        per_class=2, test_per_class=1, train_classes=["cat", "dog"], test_classes=["cat", "fox"]
    )
    with pytest.raises(UserError, match="differ") as info:
        load_dataset(root, progress=False)
    assert "dog" in str(info.value) and "fox" in str(info.value)


# -- the decoded cache ------------------------------------------------------------------------------------


def _refuse_to_decode(*args, **kwargs):
    raise AssertionError("decoded again instead of reading the cache")


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "tar.gz"])
def test_decoded_cache_is_reused(make_class_folders, make_tar_gz, monkeypatch, packed):
    root = make_class_folders(classes=2, per_class=3, test_per_class=2, non_image=True)
    source = make_tar_gz(root) if packed else root
    first = load_dataset(source, progress=False)
    monkeypatch.setattr(data_module, "_decode_class_folders", _refuse_to_decode)
    second = load_dataset(source, progress=False)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_images, second.test_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)
    assert first.classes == second.classes
    assert first.identity == second.identity  # skipped_files and test_split survive the cache


def test_changed_source_is_decoded_again(make_class_folders, monkeypatch):
    root = make_class_folders(classes=2, per_class=3, test_per_class=2)
    load_dataset(root, progress=False)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "class0" / "extra.png")
    calls = []
    original = data_module._decode_class_folders
    monkeypatch.setattr(data_module, "_decode_class_folders", lambda *a, **k: calls.append(1) or original(*a, **k))
    dataset = load_dataset(root, progress=False)
    assert calls == [1]
    assert len(dataset.train_labels) == 7


def test_unreadable_cache_is_decoded_again(make_class_folders, capsys):
    from cifar_tl.core.files import cache_dir

    root = make_class_folders(classes=2, per_class=3, test_per_class=2)
    first = load_dataset(root, progress=False)
    checksum = source_checksum(str(root))
    cache_file = cache_dir("data") / f"{checksum.split(':')[1][:24]}.npz"
    assert cache_file.is_file()
    cache_file.write_bytes(b"not an npz")
    second = load_dataset(root, progress=False)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    assert "unreadable data cache" in capsys.readouterr().err
    assert not list(cache_file.parent.glob(".tmp-*"))


# -- README promises: centre crops of non-square images, and the warning that counts skipped files -----------

GREEN, RED, BLUE = (0, 200, 0), (230, 0, 0), (0, 0, 230)


def _banded(width: int, height: int) -> Image.Image:
    """Three bands along the longer side: red, then green (the centre square), then blue."""
    image = Image.new("RGB", (width, height), GREEN)
    third = max(width, height) // 3
    first, last = ((0, 0, third, height), (2 * third, 0, width, height)) if width > height else \
        ((0, 0, width, third), (0, 2 * third, width, height))
    image.paste(RED, first)
    image.paste(BLUE, last)
    return image


@pytest.mark.parametrize("width, height", [(96, 32), (32, 96), (150, 50)], ids=["wide", "tall", "wide-large"])
def test_non_square_images_are_stored_as_their_centre_square(tmp_path, width, height):
    """Mixed sizes are stored as MIXED_STORE_SIZE squares cut from the middle: only the green centre band
    survives; a squashed, stretched or corner crop would keep some red or blue."""
    root = tmp_path / "bands"
    for split, count in (("train", 2), ("test", 1)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                _banded(width, height).save(root / split / label / f"{i}.png")
    Image.new("RGB", (40, 40), GREEN).save(root / "train" / "a" / "square.png")  # another size: mixed sizes
    dataset = load_dataset(root, progress=False)
    side = MIXED_STORE_SIZE
    assert dataset.train_images.shape == (5, side, side, 3)
    for image in dataset.train_images:
        pixels = image.astype(int)
        inner = pixels[16:-16, 16:-16]  # away from the few resampled pixels at the border
        assert np.abs(inner - np.array(GREEN)).max() <= 6, "red or blue from outside the centre square kept"
        assert pixels[..., 0].mean() < 8 and pixels[..., 2].mean() < 8  # at most a blurred border line


def test_unreadable_files_are_skipped_with_one_warning_that_counts_them(make_class_folders, tmp_path, capsys,
                                                                       monkeypatch):
    root = make_class_folders(classes=3, per_class=6, test_per_class=2, non_image=True)  # train/class0/notes.txt
    (root / "train" / "class1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "test" / "class2" / "empty.png").write_bytes(b"")
    capsys.readouterr()
    dataset = load_dataset(root, progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("cifar-tl: skipped 3 file(s)"), warnings
    assert dataset.identity["skipped_files"] == 3
    assert len(dataset.train_labels) == 18 and len(dataset.test_labels) == 6
    # the record of a run on it says how many were skipped
    from cifar_tl.records.identity import make_config
    from cifar_tl.records.runner import run

    monkeypatch.setenv("CIFAR_TL_CACHE", str(tmp_path / "own-cache"))
    record = run(make_config("linear_probe", "simple_cnn", per_class=3, val_per_class=2, image_size=32, epochs=1,
                             data=str(root), precision="fp32", device="cpu"), progress=False, device="cpu")
    assert record["data"]["skipped_files"] == 3
