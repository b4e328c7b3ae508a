"""The backbone registry: every entry builds, normalises inside, takes local weight files; offline errors;
the conversions of the registry packages' ImageNet weights into timm's layout."""

from __future__ import annotations

import huggingface_hub
import open_clip
import pytest
import timm
import torch
import torchvision
from conftest import CIFAR, RESNET20, require
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.data.loading import decode_image_folder
from rftbench.models.build import build_backbone, check_weights
from rftbench.models.nets import Normalize
from rftbench.models.registry import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from rftbench.models.weights import WeightsUnavailable, package_file, packaged_weights

PAPER = ["ViT", "SWIN", "CNX", "R50", "ClipViT", "ClipCNX"]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """No test may reach a hub: an empty hub cache, offline mode, a private conversion cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("RFTBENCH_CACHE", str(tmp_path / "rftbench-cache"))
    for spec in BACKBONES.values():
        monkeypatch.delenv(spec.env_var, raising=False)


def pretrained_layout_file(name: str, path) -> dict[str, torch.Tensor]:
    """A weights file as a user would download it (random values), in the library's own layout."""
    spec = BACKBONES[name]
    torch.manual_seed(123)
    if spec.source == "timm":
        state = timm.create_model(spec.model, pretrained=False).state_dict()  # with its original head
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return state
    if spec.source == "open_clip":  # a whole-CLIP checkpoint: the text tower's tensors must be ignored
        visual = build_backbone(name, 3, pretrained=False)[1].visual.state_dict()
        torch.save(
            {**{f"visual.{k}": v for k, v in visual.items()}, "token_embedding.weight": torch.zeros(3)}, path
        )
        return visual
    state = build_backbone(name, 10, pretrained=False)[1].state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


def body(model: torch.nn.Module, spec) -> dict[str, torch.Tensor]:
    inner = model[1].visual if spec.source == "open_clip" else model[1]
    return {k: v for k, v in inner.state_dict().items() if not k.startswith(spec.head + ".")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_normalises_inside_and_loads_a_local_file(name, tmp_path):
    spec = BACKBONES[name]
    torch.manual_seed(0)
    model = build_backbone(name, 7, pretrained=False).eval()
    assert isinstance(model[0], Normalize)
    assert model[0].mean.flatten().tolist() == pytest.approx(spec.normalization[0])
    assert model[0].std.flatten().tolist() == pytest.approx(spec.normalization[1])
    head = model[1].get_submodule(spec.head)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7
    x = torch.rand(2, 3, spec.size, spec.size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()

    suffix = ".safetensors" if spec.source == "timm" else ".pt"
    saved = pretrained_layout_file(name, tmp_path / f"weights{suffix}")
    built = []
    for _ in range(2):  # the file is what a user passes with --weights NAME=FILE
        torch.manual_seed(1)
        built.append(build_backbone(name, 7, weights=tmp_path / f"weights{suffix}").eval())
    loaded = body(built[0], spec)
    expected = {k: v for k, v in saved.items() if not k.startswith(spec.head + ".")}
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in loaded)
    with torch.no_grad():
        assert torch.equal(built[0](x), built[1](x))
        assert not torch.equal(built[0](x), logits)


def test_the_paper_backbones_are_the_protocols_exact_models():
    expected = {
        "ViT": "vit_base_patch16_224.augreg_in1k",
        "SWIN": "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
        "CNX": "convnext_base.fb_in22k_ft_in1k",
        "R50": "resnet50.a1_in1k",
        "ClipViT": "vit_base_patch16_clip_224.laion2b",
        "ClipCNX": "convnext_base_w.laion2b_s13b_b82k",
    }
    assert {name: f"{BACKBONES[name].model}.{BACKBONES[name].tag}" for name in PAPER} == expected
    assert all(BACKBONES[name].size == 224 for name in PAPER) and BACKBONES["ClipCNX"].source == "open_clip"


@pytest.mark.parametrize("name", [n for n in BACKBONES if BACKBONES[n].source != "rftbench"])
def test_normalisation_is_the_libraries_own(name):
    spec = BACKBONES[name]
    if spec.source == "timm":
        cfg = timm.models.get_pretrained_cfg(f"{spec.model}.{spec.tag}")
        own = (cfg.mean, cfg.std)
    else:
        cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
        own = (cfg["mean"], cfg["std"])
    assert spec.normalization == (tuple(own[0]), tuple(own[1]))


def test_imagenet_normalisation_can_be_forced():
    model = build_backbone("ViT", 3, pretrained=False, imagenet_normalization=True)
    assert model[0].mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert model[0].std.flatten().tolist() == pytest.approx(IMAGENET_STD)


def test_clip_convnext_builds_no_text_tower():
    model = build_backbone("ClipCNX", 4, pretrained=False)
    names = {n for n, _ in model.named_modules()}
    assert not any("transformer" in n or "token_embedding" in n for n in names)
    assert not any(n.startswith("1.text") for n in names)


@pytest.mark.parametrize("name", [n for n in BACKBONES if BACKBONES[n].size != 32])
def test_every_backbone_runs_at_another_resolution(name, tmp_path):
    """`resolution` below a backbone's own: random-init, and from a weights file in the library's layout
    (timm resamples what depends on the size). SWIN refused 64 px at its first forward until 0.5."""
    spec = BACKBONES[name]
    models = [build_backbone(name, 3, pretrained=False, size=64)]
    if spec.source == "timm" and spec.model.startswith(("vit", "swin")):
        pretrained_layout_file(name, tmp_path / "weights.safetensors")
        models.append(build_backbone(name, 3, weights=tmp_path / "weights.safetensors", size=64))
    with torch.no_grad():
        assert all(model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3) for model in models)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'vit'.*ViT, SWIN, CNX, R50, ClipViT, ClipCNX"):
        build_backbone("vit", 3)


# ---- weights unreachable offline: one line saying which file to provide, and how ----


@pytest.mark.parametrize("name", ["R50", "ClipCNX"])
def test_offline_without_weights_says_which_file_to_provide(name):
    spec = BACKBONES[name]
    for call in (lambda: build_backbone(name, 5), lambda: check_weights([name])):
        with pytest.raises(WeightsUnavailable) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and f"backbone {name}" in message
        assert spec.env_var in message and f"--weights {name}=FILE" in message and spec.tag in message


def test_a_missing_local_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailable, match=f"file {tmp_path / 'nope.safetensors'} not found"):
        build_backbone("SWIN", 5, weights=tmp_path / "nope.safetensors")


def test_cifar_resnet20_needs_a_file_and_takes_it_from_the_environment(monkeypatch):
    with pytest.raises(WeightsUnavailable, match="RFTBENCH_WEIGHTS_CIFAR_RESNET20"):
        check_weights(["cifar_resnet20"])
    monkeypatch.setenv("RFTBENCH_WEIGHTS_CIFAR_RESNET20", str(require(RESNET20)))
    check_weights(["cifar_resnet20"])
    model = build_backbone("cifar_resnet20", 10).eval()
    original = torch.load(RESNET20, map_location="cpu", weights_only=True)["state_dict"]
    model[1].linear.load_state_dict({k: original[f"module.linear.{k}"] for k in ("weight", "bias")})
    images, labels, _ = decode_image_folder(require(CIFAR / "test"), 32, per_class=20)
    with torch.no_grad():
        accuracy = (model(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.7  # the real weights with their own head: about 80% on these JPEGs


# ---- the registry packages' real ImageNet weights, converted into timm's layout ----


def source_model(name: str) -> torch.nn.Module:
    if name == "mobilenetv2_100":
        model = torchvision.models.mobilenet_v2()
    else:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(package_file(name), map_location="cpu", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_converted_weights_reproduce_the_source_models_logits(name, tmp_path):
    assert package_file(name) is not None, "make setup installs the weight packages"
    converted = packaged_weights(name)
    assert converted.parent == tmp_path / "rftbench-cache" and converted.suffix == ".safetensors"
    stamp = converted.stat().st_mtime_ns
    assert packaged_weights(name) == converted and converted.stat().st_mtime_ns == stamp, "converted once"
    timm_model = timm.create_model(BACKBONES[name].model, pretrained=False)
    timm_model.load_state_dict(load_file(str(converted)))
    torch.manual_seed(0)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = timm_model.eval()(x), source_model(name)(x)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


# ImageNet classes of CIFAR-10's categories (coarse sets: dog breeds, cats, birds, frogs, vessels ...).
IMAGENET_CLASSES = {
    "airplane": {404, 405, 895, 908},
    "automobile": {436, 468, 479, 511, 581, 609, 627, 656, 661, 717, 751, 817},
    "bird": set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147)),
    "cat": set(range(281, 286)),
    "deer": {351, 352, 353},
    "dog": set(range(151, 269)),
    "frog": {30, 31, 32},
    "horse": {339, 603},
    "ship": {472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 913},
    "truck": {555, 569, 656, 675, 717, 734, 864, 867},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2_100"])
def test_converted_models_recognise_real_images_with_their_imagenet_head(name):
    images, labels, classes = decode_image_folder(require(CIFAR / "test"), 224, per_class=20)
    x = images.float() / 255

    def top5_hit_rate(model):
        with torch.no_grad():
            top5 = model.eval()(x).topk(5, dim=1).indices.tolist()
        return sum(bool(set(t) & IMAGENET_CLASSES[classes[c]]) for t, c in zip(top5, labels.tolist())) / len(
            x
        )

    pretrained = build_backbone(name, 1000)
    pretrained[1].load_state_dict(load_file(str(packaged_weights(name))))  # the real ImageNet head back
    torch.manual_seed(0)
    hit, chance = top5_hit_rate(pretrained), top5_hit_rate(build_backbone(name, 1000, pretrained=False))
    print(f"{name}: top-5 in the right ImageNet category {hit:.3f}, random init {chance:.3f}")
    assert hit > 0.35 and hit > chance + 0.15


def test_backbones_command_lists_the_registry():
    result = CliRunner().invoke(app, ["backbones"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in BACKBONES:
        assert name in result.output
    assert "RFTBENCH_WEIGHTS_SWIN" in result.output


def test_backbones_command_checks_local_weight_files(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(
        app, ["backbones", "--weights", f"cifar_resnet20={require(RESNET20)}"], env={"COLUMNS": "300"}
    )
    assert ok.exit_code == 0 and "yes" in ok.output and "resnet20-12fca82f.th" in ok.output
    missing = runner.invoke(app, ["backbones", "--weights", f"SWIN={tmp_path / 'swin.safetensors'}"])
    assert missing.exit_code == 2 and "swin.safetensors not found" in missing.output
    assert "Traceback" not in missing.output
    unknown = runner.invoke(app, ["backbones", "--weights", "swin=x.pt"])
    assert unknown.exit_code == 2 and "unknown backbone(s) swin: valid ones are ViT, SWIN" in unknown.output
    malformed = runner.invoke(app, ["backbones", "--weights", "SWIN"])
    assert malformed.exit_code == 2 and "write it as NAME=PATH" in malformed.output
