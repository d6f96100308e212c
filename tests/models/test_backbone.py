"""Backbone: table 1 shapes, and the three ways to get weights (random, local file, ImageNet)."""

from urllib.error import URLError

import pytest
import torch
from torchvision.models import resnet18

from pitscope.models.backbone import Backbone, build_resnet18, imagenet_cache_path


def _assert_same_weights(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, value in reference.items():
        assert torch.equal(state[key.removeprefix("module.")], value), key


def test_table1_shapes_at_256():
    torch.manual_seed(0)
    backbone = Backbone().eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 256, 256))
    # paper name -> torchvision name: conv1, conv2_x=layer1, conv3_x=layer2, conv4_x=layer3, conv5_x=layer4
    assert {name: tuple(f.shape) for name, f in features.items()} == {
        "conv1": (1, 64, 128, 128),
        "layer1": (1, 64, 64, 64),
        "layer2": (1, 128, 32, 32),
        "layer3": (1, 256, 16, 16),
        "layer4": (1, 512, 8, 8),
    }
    assert backbone.channels == {"conv1": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert (features["conv1"] >= 0).all()  # after the ReLU, before the max pool


def test_backbone_has_no_classifier():
    names = set(Backbone().state_dict())
    assert not any(name.startswith(("fc.", "avgpool")) for name in names)


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "module_prefix"])
def test_local_weights_file(tmp_path, layout):
    torch.manual_seed(1)
    reference = resnet18(weights=None).state_dict()
    if layout == "bare":
        saved = reference
    elif layout == "module_prefix":
        saved = {"state_dict": {f"module.{key}": value for key, value in reference.items()}}
    else:
        saved = {layout: reference, "epoch": 3}
    path = tmp_path / "resnet18.pt"
    torch.save(saved, path)
    torch.manual_seed(2)  # a different random init, overwritten by the file
    _assert_same_weights(build_resnet18(str(path)), reference)


def test_backbone_state_dict_is_a_weights_file(tmp_path):
    torch.manual_seed(3)
    source = Backbone()
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)  # no fc: the classifier keeps its random init
    torch.manual_seed(4)
    _assert_same_weights(Backbone(str(path)), source.state_dict())


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_resnet18(str(tmp_path / "nowhere.pt"))


def test_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        build_resnet18(str(path))


def test_imagenet_without_cache_or_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise URLError("no network (simulated)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        build_resnet18("imagenet")
    assert str(imagenet_cache_path()) in str(info.value)
    assert imagenet_cache_path().parent == tmp_path / "checkpoints"
    assert len(calls) == 1


def test_imagenet_reads_the_hub_cache_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(5)
    reference = resnet18(weights=None).state_dict()
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(reference, imagenet_cache_path())
    _assert_same_weights(build_resnet18("imagenet"), reference)
