"""Networks: slice backbones, the attention head, and the 3D baselines (ACS inflation)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from TwoFiveCNNLib.inference.predict import BUNDLED_MODEL
from TwoFiveCNNLib.io.model_file import load_archive
from TwoFiveCNNLib.networks.backbones import (
    IMAGENET_BACKBONES,
    MIN_PRETRAINED_FRACTION,
    PartialWeightsError,
    SliceClassifier,
    available_backbones,
    build_backbone,
    load_pretrained,
)
from TwoFiveCNNLib.networks.heads import AttentionHead
from TwoFiveCNNLib.networks.mobilenet import MobileNetV2
from TwoFiveCNNLib.networks.resnet import BasicBlock, ResNet
from TwoFiveCNNLib.networks.severity_model import SeverityModel
from TwoFiveCNNLib.networks.volumetric import (
    ACSConv,
    Small3DCNN,
    VolumeClassifier,
    build_volume_baseline,
    inflate_acs,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _trained_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorm non-trivial running statistics (one training-mode pass), then switch to eval."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _torchvision_classifier(name: str) -> nn.Module:
    """The ImageNet backbone ``name`` with torchvision's 1000-class head: torchvision's model, key for key."""
    model = build_backbone(name)
    if name == "mobilenet_v2":
        model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.embedding_dim, 1000))
    else:
        model.fc = nn.Linear(model.embedding_dim, 1000)
    return model


def _miniature_imagenet_resnet() -> ResNet:
    """A two-stage ResNet on ImageNet-normalised RGB, small enough to inflate in a unit test."""
    return ResNet(BasicBlock, blocks=(1, 1), widths=(8, 16), imagenet_input=True)


def _miniature_imagenet_mobilenet() -> MobileNetV2:
    """MobileNetV2 in miniature: a 12-channel stem, one depthwise block, 12 output channels."""
    return MobileNetV2(((1, 12, 1, 1),), stem_channels=12, last_channel=12, imagenet_input=True)


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", available_backbones())
def test_backbone_shapes(name: str) -> None:
    backbone = build_backbone(name).eval()
    size = 128 if name == "compact_resnet" else 64
    x = torch.rand(2, 1, size, size)
    with torch.inference_mode():
        embeddings = backbone(x)
        maps = backbone.feature_maps(x)
    assert embeddings.shape == (2, backbone.embedding_dim)
    assert maps.shape[:2] == (2, backbone.embedding_dim) and maps.dim() == 4
    torch.testing.assert_close(embeddings, maps.mean(dim=(2, 3)))


def test_build_backbone_unknown_name() -> None:
    with pytest.raises(ValueError, match="compact_resnet"):
        build_backbone("no_such_net")


@pytest.mark.parametrize("size", [96, 128])
def test_compact_resnet_forward_is_pooled_feature_maps(size: int) -> None:
    backbone = _trained_statistics(build_backbone("compact_resnet"), torch.rand(4, 1, size, size))
    x = torch.rand(3, 1, size, size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        maps = backbone.feature_maps(x)
        torch.testing.assert_close(backbone(x), maps.mean(dim=(2, 3)))
    assert maps.shape == (3, 256, size // 32, size // 32)


def test_compact_resnet_layout_is_the_bundled_models() -> None:
    """The compact backbone's state_dict keys and shapes are those of the model file the module bundles."""
    tensors, metadata = load_archive(BUNDLED_MODEL)
    assert metadata["architecture"]["backbone"] == "compact_resnet"
    stage1 = tensors.get("slice_classifier", tensors.get("classifier"))  # the group's name before 0.2
    stored = {
        k.removeprefix("backbone."): tuple(v.shape) for k, v in stage1.items() if k.startswith("backbone.")
    }
    backbone = build_backbone("compact_resnet", **metadata["architecture"]["backbone_kwargs"])
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items()} == stored
    assert "layer2.0.downsample.1.running_var" in stored and "layer4.1.bn2.weight" in stored
    loaded = SeverityModel.load(BUNDLED_MODEL).slice_classifier.backbone  # loads strictly, key for key
    assert set(loaded.state_dict()) == set(stored)


def test_compact_resnet_initialisation() -> None:
    """Kaiming (fan_out) convolutions; blocks start as the identity unless zero_init_residual is off."""
    backbone = build_backbone("compact_resnet")
    blocks = [block for name in backbone.stage_names for block in getattr(backbone, name)]
    assert len(blocks) == 8 and all(torch.all(block.bn2.weight == 0) for block in blocks)
    assert all(torch.all(block.bn1.weight == 1) for block in blocks)
    fan_out = backbone.layer4[1].conv2.weight[0].numel()  # 3 x 3 x 256, as for every output channel
    assert backbone.layer4[1].conv2.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    plain = build_backbone("compact_resnet", zero_init_residual=False)
    assert all(torch.all(getattr(plain, name)[0].bn2.weight == 1) for name in plain.stage_names)


# Published sizes of torchvision's ImageNet models: parameters, and state_dict entries (buffers included).
TORCHVISION_SIZES = {
    "resnet18": (11_689_512, 122),
    "resnet34": (21_797_672, 218),
    "resnet50": (25_557_032, 320),
    "mobilenet_v2": (3_504_872, 314),
}


@pytest.mark.parametrize("name", IMAGENET_BACKBONES)
def test_imagenet_architectures_have_torchvisions_sizes(name: str) -> None:
    model = _torchvision_classifier(name)
    assert (sum(p.numel() for p in model.parameters()), len(model.state_dict())) == TORCHVISION_SIZES[name]


@pytest.mark.parametrize("name", IMAGENET_BACKBONES)
def test_imagenet_architectures_match_torchvision_key_for_key(name: str) -> None:
    models = pytest.importorskip("torchvision.models")
    ours = _torchvision_classifier(name).state_dict()
    theirs = getattr(models, name)(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_imagenet_backbones_take_greyscale_and_have_no_head(name: str) -> None:
    model = _torchvision_classifier(name)
    backbone = build_backbone(name).eval()
    embeddings = backbone(torch.rand(2, 1, 32, 32))
    assert embeddings.shape == (2, backbone.embedding_dim)
    # The backbone's keys equal the torchvision model's minus its head, so ImageNet files load as they are.
    head = ("fc.", "classifier.")
    assert set(backbone.state_dict()) == {k for k in model.state_dict() if not k.startswith(head)}


def test_class_activation_maps() -> None:
    classifier = SliceClassifier(build_backbone("compact_resnet"), n_classes=5, dropout=0.5)
    nn.init.normal_(classifier.linear.weight)
    x = torch.rand(3, 1, 96, 96)
    classifier = _trained_statistics(classifier, x)
    with torch.no_grad():
        logits = classifier(x)
        cams = classifier.class_activation_maps(x)
        assert cams.shape == (3, 3, 3)
        # CAM of the predicted class, averaged over the map, is that class's logit minus its bias.
        predicted = logits.argmax(dim=1)
        expected = logits.gather(1, predicted[:, None])[:, 0] - classifier.linear.bias[predicted]
        torch.testing.assert_close(cams.mean(dim=(1, 2)), expected)
        grades = torch.arange(5.0)
        severity = classifier.class_activation_maps(x, grades)
        per_class = torch.stack(
            [classifier.class_activation_maps(x, torch.eye(5)[c]) for c in range(5)], dim=1
        )
        torch.testing.assert_close(severity, (grades[None, :, None, None] * per_class).sum(dim=1))
        probabilities = torch.softmax(logits, dim=1)
        assert classifier.class_activation_maps(x, probabilities).shape == (3, 3, 3)
    assert classifier.embed(x).shape == (3, 256)


# ---------------------------------------------------------------- pretrained weights


def test_load_pretrained_round_trip(tmp_path) -> None:
    source = _trained_statistics(build_backbone("compact_resnet"), torch.rand(4, 1, 64, 64))
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    target = build_backbone("compact_resnet").eval()
    x = torch.rand(2, 1, 64, 64)
    assert not torch.allclose(target(x), source(x))
    report = load_pretrained(target, path)
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(target(x), source(x))


def test_load_pretrained_ignores_a_classification_head_and_wrapper_prefix(tmp_path) -> None:
    classifier = SliceClassifier(build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1)), 3)
    path = tmp_path / "stage1.pt"
    torch.save({"state_dict": classifier.state_dict()}, path)  # keys "backbone.*" and "linear.*"
    target = build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1))
    report = load_pretrained(target, path)
    torch.testing.assert_close(target.state_dict(), classifier.backbone.state_dict())
    assert report.missing == [] and report.unexpected == []  # the stage-1 classifier is a head: expected
    extras = {"fc.weight": torch.zeros(1000, 16), "projection.weight": torch.zeros(4, 16)}
    torch.save({**classifier.backbone.state_dict(), **extras}, path)
    assert load_pretrained(target, path).unexpected == ["projection.weight"]


def test_load_pretrained_errors(tmp_path) -> None:
    backbone = build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1))
    missing = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_pretrained(backbone, missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(ValueError, match="garbage.pt"):
        load_pretrained(backbone, garbage)
    unrelated = tmp_path / "unrelated.pt"
    torch.save(nn.LSTM(4, 4).state_dict(), unrelated)
    with pytest.raises(ValueError, match=r"no weights in .*unrelated.pt match.*bn1.weight.*weight_hh_l0"):
        load_pretrained(backbone, unrelated)
    wrong_shape = tmp_path / "wider.pt"
    torch.save(build_backbone("compact_resnet", widths=(16, 32), blocks=(1, 1)).state_dict(), wrong_shape)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(backbone, wrong_shape)


def test_a_full_pretrained_file_loads_with_a_complete_report(tmp_path) -> None:
    source = build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1))
    path = tmp_path / "full.pt"
    torch.save(source.state_dict(), path)
    target = build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1))
    report = load_pretrained(target, path)
    n_parameters = len(list(target.parameters()))
    assert (report.parameters_loaded, report.parameters_total, report.fraction) == (n_parameters, n_parameters, 1.0)
    assert report.complete and report.mismatched == [] and len(report.loaded) == len(target.state_dict())
    assert report.describe() == (
        f"pretrained weights {path}: loaded {n_parameters} of {n_parameters} backbone parameter tensors (100%), "
        f"{len(target.state_dict())} tensors in all")  # one line: nothing left over
    assert report.to_dict()["missing"] == {"count": 0, "examples": []}


def _shallower_compact_resnet_file(path: Path) -> nn.Module:
    """A compact ResNet with one block per stage where ours has two: the names it has fit, the rest are absent."""
    shallow = _trained_statistics(build_backbone("compact_resnet", blocks=(1, 1, 1, 1)), torch.rand(2, 1, 64, 64))
    torch.save(shallow.state_dict(), path)
    return shallow


def test_a_partial_pretrained_file_is_refused_naming_the_file_and_the_fix(tmp_path) -> None:
    path = tmp_path / "shallow_resnet.pt"
    _shallower_compact_resnet_file(path)
    target = build_backbone("compact_resnet")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PartialWeightsError, match=r"shallow_resnet\.pt fills only 36 of the 60 parameter tensors .*60%") as error:
        load_pretrained(target, path)
    message = str(error.value)
    assert "--allow-partial" in message and "--backbone" in message
    assert "48 left as initialised (not in the file), e.g. layer1.1.conv1.weight, layer1.1.bn1.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items()), "a refused file loads nothing"
    assert isinstance(error.value, ValueError), "the command line reports ValueErrors as usage errors"


def test_a_partial_pretrained_file_loads_when_allowed_and_says_what_it_left(tmp_path) -> None:
    path = tmp_path / "shallow_resnet.pt"
    shallow = _shallower_compact_resnet_file(path)
    target = build_backbone("compact_resnet")
    untouched = target.state_dict()["layer4.1.conv2.weight"].clone()
    report = load_pretrained(target, path, allow_partial=True)
    assert (report.parameters_loaded, report.parameters_total) == (36, 60)
    assert report.fraction < MIN_PRETRAINED_FRACTION and not report.complete
    assert len(report.missing) == 48 and report.unexpected == [] and report.mismatched == []  # 24 params + 24 buffers
    torch.testing.assert_close(target.state_dict()["layer4.0.conv2.weight"], shallow.state_dict()["layer4.0.conv2.weight"])
    assert torch.equal(target.state_dict()["layer4.1.conv2.weight"], untouched)
    lines = report.describe(examples=2).splitlines()
    assert lines == [f"pretrained weights {path}: loaded 36 of 60 backbone parameter tensors (60%), 72 tensors in all",
                     "  48 left as initialised (not in the file), e.g. layer1.1.conv1.weight, layer1.1.bn1.weight"]
    assert report.to_dict(examples=1)["missing"] == {"count": 48, "examples": ["layer1.1.conv1.weight"]}


def test_a_pretrained_file_with_some_other_shapes_loads_the_rest_and_reports_them(tmp_path) -> None:
    """An RGB first convolution (3 input channels) in a greyscale backbone: skipped and named, the rest loads."""
    source = build_backbone("compact_resnet")
    state = source.state_dict()
    state["conv1.weight"] = state["conv1.weight"].repeat(1, 3, 1, 1)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "rgb_stem.pt"
    torch.save(state, path)
    target = build_backbone("compact_resnet")
    report = load_pretrained(target, path)  # 59 of 60 is above the threshold: no flag needed
    assert (report.parameters_loaded, report.parameters_total) == (59, 60)
    rgb_shape, grey_shape = tuple(state["conv1.weight"].shape), tuple(target.conv1.weight.shape)
    assert report.mismatched == [f"conv1.weight (file {rgb_shape}, backbone {grey_shape})"]
    assert report.unexpected == ["extra.weight"] and report.missing == []
    text = report.describe()
    assert "1 not loaded: shapes differ, e.g. conv1.weight" in text
    assert "1 in the file but not in the backbone (unused), e.g. extra.weight" in text


# ---------------------------------------------------------------- attention head


def test_attention_sums_to_one_and_any_slice_count_works() -> None:
    head = AttentionHead(embedding_dim=16, n_classes=5, hidden=32).eval()
    for slices in range(1, 101):
        logits, attention = head(torch.randn(2, slices, 16))
        assert logits.shape == (2, 5) and attention.shape == (2, slices)
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))


def test_masked_slices_do_not_affect_outputs() -> None:
    head = AttentionHead(embedding_dim=16, n_classes=3, hidden=32, context_kernel=5).eval()
    study = torch.randn(1, 9, 16)
    logits, attention = head(study)
    garbage = torch.full((1, 6, 16), 1e4)
    garbage[0, 2] = float("nan")
    padded = torch.cat([study, garbage], dim=1)
    mask = torch.arange(15)[None] < 9
    padded_logits, padded_attention = head(padded, mask)
    torch.testing.assert_close(padded_logits, logits)
    torch.testing.assert_close(padded_attention[:, :9], attention)
    assert torch.all(padded_attention[:, 9:] == 0)
    # Batched with a longer study, the short one still gets its own result.
    batch = torch.cat([padded, torch.randn(1, 15, 16)])
    batch_mask = torch.cat([mask, torch.ones(1, 15, dtype=torch.bool)])
    batch_logits, _ = head(batch, batch_mask)
    torch.testing.assert_close(batch_logits[:1], logits)


def test_attention_head_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="odd"):
        AttentionHead(8, 2, context_kernel=2)
    head = AttentionHead(8, 2)
    with pytest.raises(ValueError, match="unmasked"):
        head(torch.randn(1, 4, 8), torch.zeros(1, 4, dtype=torch.bool))


def test_attention_head_gradients_flow() -> None:
    head = AttentionHead(embedding_dim=16, n_classes=4, hidden=32)
    embeddings = torch.randn(3, 12, 16, requires_grad=True)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 8:] = False
    logits, _ = head(embeddings, mask)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3])).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert embeddings.grad[0, 8:].abs().sum() == 0 and embeddings.grad[0, :8].abs().sum() > 0


def _lesion_studies(count: int, patterns: torch.Tensor, generator: torch.Generator):
    """Toy studies of 20-40 noise slices; class c > 0 puts pattern c-1 on 3 random 'lesion' slices."""
    max_slices, dim = 40, patterns.shape[1]
    embeddings = torch.randn(count, max_slices, dim, generator=generator)
    lengths = torch.randint(20, max_slices + 1, (count,), generator=generator)
    mask = torch.arange(max_slices)[None] < lengths[:, None]
    labels = torch.randint(0, len(patterns) + 1, (count,), generator=generator)
    lesions = torch.zeros(count, max_slices, dtype=torch.bool)
    for index in range(count):
        where = torch.randperm(int(lengths[index]), generator=generator)[:3]
        if labels[index] > 0:
            lesions[index, where] = True
            embeddings[index, where] += patterns[labels[index] - 1]
    return embeddings, mask, labels, lesions


def test_attention_head_learns_lesion_slices_and_attends_to_them() -> None:
    generator = torch.Generator().manual_seed(1)
    patterns = 5.0 * nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=1)
    train = _lesion_studies(512, patterns, generator)
    test = _lesion_studies(256, patterns, generator)
    head = AttentionHead(embedding_dim=16, n_classes=3, hidden=32, dropout=0.0)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    embeddings, mask, labels, _ = train
    for _ in range(60):
        optimiser.zero_grad()
        logits, _ = head(embeddings, mask)
        nn.functional.cross_entropy(logits, labels).backward()
        optimiser.step()
    head.eval()
    embeddings, mask, labels, lesions = test
    with torch.no_grad():
        logits, attention = head(embeddings, mask)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    lesion_studies = labels > 0
    attention_on_lesions = (attention * lesions).sum(dim=1)[lesion_studies].mean().item()
    uniform_share = (3 / mask.sum(dim=1).float())[lesion_studies].mean().item()
    assert accuracy > 0.9, accuracy
    assert attention_on_lesions > 0.6 > 4 * uniform_share, (attention_on_lesions, uniform_share)


# ---------------------------------------------------------------- 3D baselines


def test_small_3d_cnn_shapes() -> None:
    model = Small3DCNN(n_classes=5, width=4)
    logits = model(torch.rand(2, 1, 3, 32, 32))  # thinner than the pooling factor along z
    assert logits.shape == (2, 5)
    logits.sum().backward()


def test_build_volume_baseline() -> None:
    assert isinstance(build_volume_baseline("cnn3d", 2, width=4), Small3DCNN)
    backbone = build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1))
    acs = build_volume_baseline("acs", 5, backbone)
    assert isinstance(acs, VolumeClassifier) and acs(torch.rand(2, 1, 8, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="cnn3d"):
        build_volume_baseline("vit", 2)


def test_inflate_acs_shapes_and_carries_weights() -> None:
    backbone2d = _trained_statistics(build_backbone("compact_resnet"), torch.rand(4, 1, 64, 64))
    backbone3d = inflate_acs(backbone2d)
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in backbone3d.modules())
    assert all(isinstance(m, nn.Conv2d) for m in [backbone2d.conv1, backbone2d.layer1[0].conv1])  # untouched
    state2d, state3d = backbone2d.state_dict(), backbone3d.state_dict()
    assert state2d.keys() == state3d.keys()
    for key in state2d:  # kernels, BN affine weights and running statistics all carried over
        torch.testing.assert_close(state3d[key], state2d[key], msg=key)
    assert not backbone3d.training
    volume = torch.rand(2, 1, 16, 64, 64)
    with torch.no_grad():
        embeddings, maps = backbone3d(volume), backbone3d.feature_maps(volume)
    assert embeddings.shape == (2, 256) and maps.shape == (2, 256, 1, 2, 2)
    torch.testing.assert_close(embeddings, maps.mean(dim=(2, 3, 4)))


def test_acs_axial_group_reproduces_the_2d_convolution() -> None:
    """On a volume constant along z, the axial third of an ACS convolution is the slice's 2D convolution."""
    conv2d = nn.Conv2d(4, 9, 3, padding=1)
    acs = inflate_acs(nn.Sequential(conv2d))[0]
    assert isinstance(acs, ACSConv)
    assert acs.split == (3, 3, 3)
    image = torch.randn(1, 4, 20, 24)
    volume = image[:, :, None].expand(-1, -1, 5, -1, -1)
    with torch.no_grad():
        expected = conv2d(image)
        out = acs(volume)
    assert out.shape == (1, 9, 5, 20, 24)
    for z in range(5):
        torch.testing.assert_close(out[:, :3, z], expected[:, :3])
    # The coronal and sagittal thirds use the same kernels in other planes, so on this input they differ.
    assert not torch.allclose(out[:, 3:, 2], expected[:, 3:])


def test_acs_handles_depthwise_convolutions_and_imagenet_input() -> None:
    mobilenet = _trained_statistics(_miniature_imagenet_mobilenet(), torch.rand(4, 1, 32, 32))
    inflated = inflate_acs(mobilenet)
    depthwise = inflated.features[1].conv[0][0]
    assert isinstance(depthwise, ACSConv) and depthwise.split == (4, 4, 4)
    volume = torch.rand(2, 1, 6, 32, 32)
    with torch.no_grad():
        assert inflated(volume).shape == (2, 12)
    resnet3d = inflate_acs(_miniature_imagenet_resnet())
    assert resnet3d(volume).shape == (2, 16)


def test_acs_rejects_convolutions_it_cannot_inflate() -> None:
    with pytest.raises(ValueError, match="same"):
        inflate_acs(nn.Sequential(nn.Conv2d(1, 3, 3, padding=0)))
    with pytest.raises(ValueError, match="isotropic"):
        inflate_acs(nn.Sequential(nn.Conv2d(1, 3, (3, 1), padding=(1, 0))))
    with pytest.raises(TypeError, match="InstanceNorm2d"):
        inflate_acs(nn.Sequential(nn.InstanceNorm2d(3)))


def test_acs_volume_classifier_trains() -> None:
    model = build_volume_baseline("acs", 3, build_backbone("compact_resnet", widths=(8, 16), blocks=(1, 1)))
    logits = model(torch.rand(2, 1, 8, 32, 32))
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert math.isfinite(logits.sum().item())


@pytest.mark.parametrize("name", IMAGENET_BACKBONES)
def test_an_imagenet_state_dict_file_loads_whole(name: str, tmp_path) -> None:
    """A file saved as ``torch.save(torchvision_model.state_dict())`` fills every backbone tensor."""
    imagenet = _torchvision_classifier(name)
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    backbone = build_backbone(name)
    report = load_pretrained(backbone, tmp_path / "imagenet.pth")
    assert report.missing == [] and report.unexpected == []
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, imagenet.state_dict()[key]), key
