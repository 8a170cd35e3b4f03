import warnings

import numpy as np
import pytest
import torch

from adv_transport import ConfigError, IndexedBatches, load_dataset
from adv_transport.data import IndexedDataset


def test_npz_cifar_is_served_nchw_in_unit_range_with_indices(tmp_path):
    x = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 2] = 255
    np.savez(tmp_path / "cifar10_jpeg_lossy.npz", x_train=x, y_train=np.arange(6), x_test=x[:2], y_test=np.arange(2))
    with pytest.warns(UserWarning, match="relative comparisons"):
        ds = load_dataset("cifar10", "train", tmp_path)
    assert ds.lossy and ds.shape == (3, 32, 32)
    xb, yb, idx = ds.get(torch.tensor([4, 1]))
    assert xb.dtype == torch.float32 and xb[0, 2, 0, 0] == 1.0 and xb.max() == 1.0
    assert idx.tolist() == [4, 1] and yb.tolist() == [4, 1]


def test_missing_file_without_download_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match="mnist.npz"):
        load_dataset("mnist", "train", tmp_path, download=False)
    with pytest.raises(ConfigError, match="accepted: mnist, cifar10"):
        load_dataset("svhn")


def test_batches_are_seeded_per_epoch_and_resumable():
    ds = IndexedDataset(torch.zeros(10, 1, 2, 2), torch.arange(10))
    b = IndexedBatches(ds, batch_size=3, seed=4)
    e0 = [idx.tolist() for _, _, idx in b.iterate(0)]
    assert sorted(sum(e0, [])) == list(range(10)) and len(e0) == 4
    assert [idx.tolist() for _, _, idx in b.iterate(0, start_step=2)] == e0[2:]
    assert [idx.tolist() for _, _, idx in b.iterate(1)] != e0


def test_real_mnist_file_when_present():
    import os

    root = os.environ.get("ADV_TRANSPORT_DATA")
    if not root or not os.path.isfile(os.path.join(root, "mnist.npz")):
        pytest.skip("ADV_TRANSPORT_DATA has no mnist.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("mnist", "test", root)
    assert len(ds) == 10000 and ds.labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_failed_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.delenv("ADV_TRANSPORT_DATA", raising=False)
    with pytest.raises(ConfigError, match="could not download mnist.*ADV_TRANSPORT_DATA"):
        load_dataset("mnist", "train", tmp_path)


def test_class_sorted_test_split_is_served_interleaved(tmp_path):
    y = np.repeat(np.arange(3), 4)  # sorted by class, as the lossy CIFAR-10 test split
    x = np.zeros((12, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(12)  # remember each image's original position
    np.savez(tmp_path / "cifar10_jpeg_lossy.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.warns(UserWarning):
        test = load_dataset("cifar10", "test", tmp_path)
    assert test.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert (test.images[:6, 0, 0, 0]).tolist() == [0, 4, 8, 1, 5, 9]  # each class keeps its own order
    with pytest.warns(UserWarning):
        train = load_dataset("cifar10", "train", tmp_path)
    assert train.labels.tolist() == y.tolist()  # training order is left alone


def test_unsorted_test_split_keeps_its_order(tmp_path):
    y = np.array([7, 2, 1, 0, 4, 1], dtype=np.uint8)  # uint8 like the real files: no wrap-around in the check
    x = np.zeros((6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    assert load_dataset("mnist", "test", tmp_path).labels.tolist() == [7, 2, 1, 0, 4, 1]
