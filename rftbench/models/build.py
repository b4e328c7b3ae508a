"""Building a backbone: its library's model, its weights, a fresh head, its normalisation as first layer.

    model = build_backbone("SWIN", num_classes=196)                      # hub weights (library cache)
    model = build_backbone("SWIN", num_classes=196, weights="swin.safetensors")   # a local file
    model = build_backbone("ViT", num_classes=100, pretrained=False)     # random init (tests)

Every model maps [0, 1] images to logits: its normalisation is its first layer (so ε is in pixel space)
and a fresh linear head of `num_classes` outputs replaces the pretrained one. Where the weights come from
is `weights`; torch, timm and open_clip are imported by the functions that build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from rftbench.models.registry import IMNET, BackboneSpec, get_backbone_spec
from rftbench.models.weights import (
    WeightsUnavailable,
    fetch_hub_weights,
    resolve_weights,
    unavailable,
    weights_available,
)

if TYPE_CHECKING:
    from torch import nn


def _timm_model(spec: BackboneSpec, num_classes: int, pretrained: bool, file: Path | None, size: int, **kw):
    import timm

    overlay = {"file": str(file)} if file is not None else None
    if spec.model.startswith(("vit", "swin")) and size != spec.size:
        kw["img_size"] = size  # timm resamples ViT's position embedding, Swin's windows and bias tables
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
