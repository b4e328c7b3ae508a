"""Model pieces shared by every backbone: normalisation inside the model, and the CIFAR ResNet-20.

    model = with_normalization(cifar_resnet20(), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    load_cifar_resnet20_weights(model[1], "../shared/weights/resnet20-12fca82f.th")

Models take images in [0, 1] (so ε is in pixel space) and normalise them in their first layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    return nn.Sequential(Normalize(mean, std), model)


class _BasicBlock(nn.Module):
    """He et al. 2016's CIFAR block with option-A (zero-padded, parameter-free) shortcuts."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


def load_cifar_resnet20_weights(model: CifarResNet, path: str | Path) -> None:
    """Load an akamaster/pytorch_resnet_cifar10 checkpoint ({'state_dict'}, keys prefixed `module.`)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})


class ClipImageClassifier(nn.Module):
    """open_clip's image tower (with its projection) and a fresh linear head; no text tower is built."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.visual(x))


def load_visual_state(path: Path) -> dict[str, Tensor]:
    """The image-tower tensors of an open_clip checkpoint (full CLIP `visual.*` keys, or a tower alone)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return state


def convert_in_order(source: dict[str, Tensor], target: nn.Module) -> dict[str, Tensor]:
    """Map a state dict onto `target`'s keys by position. Both layouts list the same tensors in the same
    order (stem, blocks, head); every shape must match, so a wrong pairing fails loudly."""
    target_state = target.state_dict()
    if len(source) != len(target_state):
        raise ValueError(
            f"cannot convert: {len(source)} source tensors for {len(target_state)} target tensors"
        )
    converted = {}
    for (src_key, tensor), (dst_key, dst) in zip(source.items(), target_state.items()):
        if tensor.shape != dst.shape:
            raise ValueError(
                f"cannot convert {src_key} {tuple(tensor.shape)} to {dst_key} {tuple(dst.shape)}"
            )
        converted[dst_key] = tensor.clone().contiguous()
    return converted
