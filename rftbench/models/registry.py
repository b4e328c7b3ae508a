"""Backbones by name: the paper's six, two with offline ImageNet weights, and a CIFAR ResNet-20.

    spec = get_backbone_spec("SWIN")    # spec.model, spec.tag, spec.size, spec.normalization, spec.head

One `BackboneSpec` line per backbone; where its weights come from is `weights`, building it is `build`.
Torch-free at import (`rftbench backbones` lists the registry at once).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
    lora: bool = True  # has modules that `LORA_TARGETS` matches (finetune = "lora")

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
    B("R50", "timm", "resnet50", "a1_in1k", 224, IMNET, "fc", True, lora=False),
    B("ClipViT", "timm", "vit_base_patch16_clip_224", "laion2b", 224, CLIP, "head"),
    B("ClipCNX", "open_clip", "convnext_base_w", "laion2b_s13b_b82k", 224, CLIP, "head", True),
    B("tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0", "in1k", 224, INCEPTION, "classifier", True),
    B("mobilenetv2_100", "timm", "mobilenetv2_100", "ra_in1k", 224, IMNET, "classifier", True),
    B("cifar_resnet20", "rftbench", "cifar_resnet20", "resnet20-12fca82f.th", 32, IMNET, "linear", True,
      lora=False),
]}  # fmt: skip

# What LoRA adapts (peft's `target_modules` regex, matched against module names of the unnormalised model):
# the attention and MLP projections of every transformer block (timm ViT and Swin: attn.qkv, attn.proj,
# mlp.fc1, mlp.fc2), ConvNeXt's block MLP (timm's, and open_clip's timm trunk) and, in inverted-residual
# convnets (MobileNetV2, EfficientNet-Lite), the 1×1 expansion and projection convolutions (conv_pw,
# conv_pwl), a block's per-pixel MLP. A ResNet has none of these.
LORA_TARGETS = r".*blocks\.[\d.]+\.(attn\.(qkv|proj)|mlp\.fc[12]|conv_pwl?)"

# open_clip's hub repository of each open_clip backbone's pretrained tag (`open_clip.get_pretrained_cfg(model,
# tag)["hf_hub"]`, checked by a test), so that finding cached weights needs no open_clip import.
OPEN_CLIP_HUB = {"ClipCNX": "laion/CLIP-convnext_base_w-laion2B-s13B-b82K"}


def check_finetune(backbone: str, finetune: str) -> None:
    """ValueError (one line) for a fine-tuning mode the backbone cannot take: LoRA without a target layer."""
    if finetune == "lora" and not get_backbone_spec(backbone).lora:
        lora = ", ".join(name for name, spec in BACKBONES.items() if spec.lora)
        raise ValueError(
            f'finetune = "lora" needs attention or MLP projections, which {backbone} has none of: choose '
            f"full, linear, lp_ft or bitfit for it, or a backbone with them ({lora})"
        )


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}: valid ones are {', '.join(BACKBONES)}") from None
