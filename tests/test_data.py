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
    with pytest.raises(ConfigError, match="accepted: mnist, cifar10, cifar100, svhn, imagenet, folder:<path>"):
        load_dataset("stl10")


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


# ---------------------------------------------------------------------------------------------- the other datasets


def _write_folder(root, classes=("cat", "dog", "frog"), per_class=(3, 2, 2), size=(20, 12), seed=0):
    """An ImageFolder in ``root``: ``<class>/<i>.png``, class c's images brighter in channel c % 3."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(zip(classes, per_class)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
            img[..., c % 3] = 200
            img[0, 0] = (i, c, 0)  # remember class and position
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture()
def image_folder(tmp_path):
    root = tmp_path / "pets"
    _write_folder(root / "train")
    _write_folder(root / "val", classes=("cat", "frog"), per_class=(1, 2), seed=1)  # val lacks a class
    return root


def test_npz_cifar100_and_svhn_layouts(tmp_path):
    x = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar100.npz", x_train=x, y_train=np.array([0, 99, 5, 7, 42]), x_test=x[:2], y_test=[1, 0])
    c100 = load_dataset("cifar100", "train", tmp_path, download=False)
    assert c100.num_classes == 100 and c100.shape == (3, 32, 32) and c100.labels.tolist() == [0, 99, 5, 7, 42]
    xs = np.zeros((4, 3, 32, 32), dtype=np.uint8)  # NCHW, as torchvision's SVHN; the digit 0 stored as 10
    xs[2, 1] = 255
    np.savez(
        tmp_path / "svhn.npz", x_train=xs, y_train=np.array([10, 1, 2, 9]), x_test=xs, y_test=np.array([3, 3, 1, 10])
    )
    svhn = load_dataset("svhn", "train", tmp_path, download=False)
    assert svhn.labels.tolist() == [0, 1, 2, 9] and svhn.num_classes == 10 and not svhn.flip
    x2, y2, idx = svhn.get(torch.tensor([2]))
    assert x2[0, 1].min() == 1.0 and x2[0, 0].max() == 0.0 and idx.tolist() == [2]
    np.savez(tmp_path / "cifar100.npz", x_train=np.zeros((2, 28, 28)), y_train=[0, 1])
    with pytest.raises(ConfigError, match=r"expected N images of \(3, 32, 32\)"):
        load_dataset("cifar100", "train", tmp_path, download=False)


def test_torchvision_download_path_for_the_new_datasets(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeSVHN:
        def __init__(self, root, split, download):
            calls.append(("svhn", split, download))
            self.data = np.zeros((3, 3, 32, 32), dtype=np.uint8)
            self.labels = np.array([1, 2, 0])

    class FakeCIFAR100:
        def __init__(self, root, train, download):
            calls.append(("cifar100", train, download))
            self.data = np.zeros((2, 32, 32, 3), dtype=np.uint8)
            self.targets = [5, 77]

    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    monkeypatch.delenv("ADV_TRANSPORT_DATA", raising=False)
    assert load_dataset("svhn", "test", tmp_path).labels.tolist() == [1, 2, 0]
    c = load_dataset("cifar100", "train", tmp_path)
    assert c.shape == (3, 32, 32) and c.labels.tolist() == [5, 77]
    assert calls == [("svhn", "test", True), ("cifar100", True, True)]


def test_image_folder_has_stable_indices_classes_and_statistics(image_folder):
    train = load_dataset(f"folder:{image_folder}", "train", image_size=16)
    assert len(train) == 7 and train.num_classes == 3 and train.shape == (3, 16, 16) and train.flip
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]  # ImageFolder's sorted order: the bank's rows
    x, y, idx = train.get(torch.tensor([6, 0]))
    assert x.shape == (2, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [2, 0] and idx.tolist() == [6, 0]
    assert torch.equal(train[6][0], x[0]) and train[6][2] == 6
    mean, std = train.stats()
    assert len(mean) == 3 and mean[0] > mean[1] and all(s > 0 for s in std)  # 3 of 7 images are red
    val = load_dataset(f"folder:{image_folder}", "test", image_size=16)
    assert val.classes == train.classes and val.labels.tolist() == [0, 2, 2]  # train's class indices
    assert len(train.subset(4)) == 4 and train.subset(4).labels.tolist() == [0, 0, 0, 1]


def test_folder_without_val_or_an_unknown_folder_is_explained(tmp_path):
    _write_folder(tmp_path / "only" / "train")
    with pytest.raises(ConfigError, match="has no val/ folder"):
        load_dataset(f"folder:{tmp_path / 'only'}", "train")
    with pytest.raises(ConfigError, match="imagenet has no train/ folder.*not downloadable"):
        load_dataset("imagenet", "train", tmp_path)


def test_imagenet_is_read_from_its_image_folder(tmp_path):
    _write_folder(tmp_path / "imagenet" / "train", classes=("n01440764", "n01443537"), per_class=(2, 1))
    _write_folder(tmp_path / "imagenet" / "val", classes=("n01440764", "n01443537"), per_class=(1, 1))
    train = load_dataset("imagenet", "train", tmp_path, image_size=32)
    assert train.shape == (3, 32, 32) and len(train) == 3 and train.stats()[0] == (0.485, 0.456, 0.406)
    assert load_dataset("imagenet", "test", tmp_path, image_size=32).labels.tolist() == [0, 1]


def test_folder_batches_stream_through_dataloader_workers_in_the_seeded_order(image_folder):
    train = load_dataset(f"folder:{image_folder}", "train", image_size=16)
    streamed = IndexedBatches(train, batch_size=3, seed=5, num_workers=1)
    assert streamed.num_workers == 1
    order = streamed.order(0)
    batches = list(streamed.iterate(0))
    assert [b[2].tolist() for b in batches] == [order[:3].tolist(), order[3:6].tolist(), order[6:].tolist()]
    for x, y, idx in batches:
        ex, ey, _ = train.get(idx)
        assert torch.equal(x, ex) and torch.equal(y, ey) and idx.dtype == torch.long
    assert [b[2].tolist() for b in streamed.iterate(0, start_step=2)] == [order[6:].tolist()]


@pytest.mark.parametrize(
    "dataset,classes,mean0,flip",
    [
        ("mnist", 10, 0.1307, None),
        ("cifar10", 10, 0.4914, True),
        ("cifar100", 100, 0.5071, True),
        ("svhn", 10, 0.4377, False),
        ("imagenet", 1000, 0.485, True),
    ],
)
def test_each_dataset_gets_its_model_statistics_classes_and_augmentation(dataset, classes, mean0, flip):
    from adv_transport.models import build_model
    from adv_transport.recipes import recipe

    model = build_model("small-cnn", dataset, image_size=32)
    assert model.model.net[-1].out_features == classes
    assert model.mean.flatten()[0].item() == pytest.approx(mean0)
    r = recipe("atl", dataset)
    assert r.dataset == dataset
    if flip is not None:
        from adv_transport.data import dataset_flip

        assert r.augment and dataset_flip(dataset) is flip


def test_training_on_an_image_folder_end_to_end(image_folder, tmp_path):
    """train -> checkpoint -> load_model on folder:<path>, streamed through a DataLoader (no worker processes here)."""
    from adv_transport.cli import main

    out = tmp_path / "run"
    argv = [
        "train",
        "--method",
        "atl",
        "--dataset",
        f"folder:{image_folder}",
        "--image-size",
        "16",
        "--model",
        "small-cnn",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--eval-n",
        "3",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    import adv_transport as at

    run = at.load_run(out)
    assert run.config["num_classes"] == 3 and run.config["image_size"] == 16 and run.config["shape"] == [3, 16, 16]
    train = load_dataset(f"folder:{image_folder}", "train", image_size=16)
    assert torch.allclose(run.model.mean.flatten(), torch.tensor(train.stats()[0]))
    with torch.no_grad():
        assert run.model(train.get(torch.arange(7))[0]).shape == (7, 3)


def test_svhn_training_uses_crops_without_flips(tmp_path):
    from adv_transport.recipes import recipe
    from adv_transport.training import build_training

    xs = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "svhn.npz", x_train=xs, y_train=np.arange(8) % 10, x_test=xs, y_test=np.arange(8) % 10)
    train, test = load_dataset("svhn", "train", tmp_path), load_dataset("svhn", "test", tmp_path)
    trainer, _ = build_training(recipe("atl", "svhn").replace(model="small-cnn"), train, test, progress=False)
    assert trainer.augment is not None and trainer.augment.padding == 4 and not trainer.augment.flip
    trainer, _ = build_training(recipe("atl", "cifar100").replace(model="small-cnn"), train, test, progress=False)
    assert trainer.augment.flip and trainer.model.model.net[-1].out_features == 100
