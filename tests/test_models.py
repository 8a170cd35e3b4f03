"""Models built for the data they will see: the image side of ``data.shape`` (ImageNet at ``--image-size``), and the
same model rebuilt from a checkpoint's config; WideResNet names."""

import numpy as np
import pytest
import torch

from adv_transport.data import IndexedDataset
from adv_transport.errors import ConfigError
from adv_transport.models import (
    WideResNet,
    build_model,
    check_model_name,
    model_for_data,
    small_cnn_width,
    wrn_depth_width,
)


class FakeImageNet:
    """What model_for_data reads of a dataset object: ImageNet read at 16 pixels."""

    name = "imagenet"
    shape = (3, 16, 16)
    num_classes = 1000


def _write_imagenet(root, classes=("n01440764", "n01443537"), per_class=3, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            (root / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(per_class if split == "train" else 1):
                img = rng.integers(0, 80, size=(20, 24, 3), dtype=np.uint8)
                img[..., c % 3] = 200
                Image.fromarray(img).save(root / "imagenet" / split / wnid / f"{i:03d}.png")
    return root


def test_model_for_data_takes_the_image_side_of_the_data():
    model = model_for_data("small-cnn", FakeImageNet()).eval()
    assert model.model.net[5].in_features == 32 * 4 * 4  # not the 224-pixel layer of the dataset's default size
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 1000)
    # in-memory named datasets have their own sides: the same models as before
    mnist = IndexedDataset(torch.zeros(4, 1, 28, 28), torch.arange(4), name="mnist")
    torch.manual_seed(0)
    ours = model_for_data("mnist-cnn", mnist)
    torch.manual_seed(0)
    assert all(
        torch.equal(a, b) for a, b in zip(ours.state_dict().values(), build_model("mnist-cnn").state_dict().values())
    )


def test_imagenet_at_a_small_image_size_trains_and_reloads_the_same_model(tmp_path):
    """adv-transport train --dataset imagenet --image-size 16 --model small-cnn (it crashed on a 224-pixel layer),
    then load_run rebuilds the 16-pixel, 2-class model from the checkpoint's config."""
    import adv_transport as at
    from adv_transport.cli import main

    data = _write_imagenet(tmp_path / "data")
    argv = "train --method clean --dataset imagenet --image-size 16 --model small-cnn --epochs 1 --batch-size 3"
    argv = argv.split() + ["--eval-n", "2", "--workers", "0", "--no-progress", "--data-dir", str(data)]
    assert main(argv + ["--out", str(tmp_path / "run")]) == 0
    run = at.load_run(tmp_path / "run")
    assert run.config["image_size"] == 16 and run.config["num_classes"] == 2
    assert run.model.model.net[5].in_features == 32 * 4 * 4 and run.model.model.net[-1].out_features == 2
    train = at.load_dataset("imagenet", "train", data, image_size=16)
    x = train.get(torch.arange(len(train)))[0]
    with torch.no_grad():
        assert torch.equal(at.load_model(tmp_path / "run")(x), run.model(x))
        assert run.model(x).shape == (6, 2)


@pytest.mark.parametrize("name,depth_width", [("wrn-28-10", (28, 10)), ("wrn-34-10", (34, 10)), ("wrn-10-1", (10, 1))])
def test_wide_resnet_names(name, depth_width):
    assert wrn_depth_width(name) == depth_width and check_model_name(name) == name
    with torch.device("meta"):
        model = build_model(name, "cifar100")
    assert isinstance(model.model, WideResNet) and model.model.fc.out_features == 100
    assert model.model.fc.in_features == 64 * depth_width[1]


def test_wide_resnet_small_one_runs_on_any_image_side():
    model = build_model("wrn-10-1", "mnist").eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["wrn-27-10", "wrn-4-1", "wrn-28-0"])
def test_bad_wide_resnet_names_are_explained(name):
    with pytest.raises(ConfigError, match="depth is 6n \\+ 4"):
        build_model(name, "cifar10")
    with pytest.raises(ConfigError, match="unknown model 'wrn28'; accepted: .*wrn-<depth>-<width>"):
        check_model_name("wrn28")


def test_wider_small_cnn_multiplies_channels_and_hidden_units_and_keeps_the_key_names():
    base, wide = build_model("small-cnn", "cifar10"), build_model("small-cnn-w2", "cifar10")
    assert check_model_name("small-cnn-w2") == "small-cnn-w2" and small_cnn_width("small-cnn") == 1
    convs = [m.out_channels for m in wide.model.net if isinstance(m, torch.nn.Conv2d)]
    linears = [m.out_features for m in wide.model.net if isinstance(m, torch.nn.Linear)]
    assert convs == [32, 64] and linears == [200, 10] and wide.model.net[5].in_features == 64 * 8 * 8
    assert list(wide.state_dict()) == list(base.state_dict())
    with torch.no_grad():
        assert wide.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="integer >= 1"):
        build_model("small-cnn-w0", "cifar10")
    with pytest.raises(ConfigError, match="accepted: .*small-cnn-w<k>"):
        check_model_name("small-cnn-wide")
