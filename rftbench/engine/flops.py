"""FLOPs of a training step and the device peaks they are measured against: the MFU of `rftbench bench`.

    clean, adversarial, uncounted = step_flops(model, x, y, attack_steps=7)
    peak = peak_tflops(torch.device("cuda"), "bf16", tf32=True)   # None for a device not in PEAK_TFLOPS

Counted, as MFU is usually counted: matrix products, convolutions and attention, forward and backward
(torch's FlopCounterMode formulas, two corrected below). Not counted: normalisation, activations, softmax,
the loss and other elementwise work, a few percent of a step. A matrix-class op that ran with no formula
is named in the result (`uncounted`) rather than silently counted as zero.

torch's formula for `convolution_backward` counts the weight gradient of a grouped convolution as if it
were dense: `groups` times too many FLOPs, 32-960× for the depthwise convolutions of MobileNetV2 and
EfficientNet. That inflated the clean step (the only pass computing weight gradients) about sixfold for
mobilenetv2_100, and its APGD/clean FLOP ratio fell to 1.7. Here it is divided by `groups`. CPU attention
(`_scaled_dot_product_flash_attention_for_cpu` and its backward) has no formula in torch; it gets the
CUDA flash kernels' one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _peaks(bf16: float, fp32: float) -> dict[str, float]:
    """fp16 as bf16, TF32 half of bf16 (every part below)."""
    return {"bf16": bf16, "fp16": bf16, "tf32": bf16 / 2, "fp32": fp32}


# Dense (no structured sparsity) peak TFLOP/s by the exact `torch.cuda.get_device_name()`: NVIDIA's data
# sheets, whose tensor-core figures are with sparsity and halved here. A device not listed gets no MFU: a
# part guessed from a fragment of its name (an H100 PCIe taken for an SXM) would report a wrong one.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _peaks(989.0, 67.0),  # H100 SXM5
    "NVIDIA H100 PCIe": _peaks(756.0, 51.0),
    "NVIDIA H100 NVL": _peaks(835.0, 60.0),
    "NVIDIA H200": _peaks(989.0, 67.0),  # H200 SXM
    "NVIDIA H200 NVL": _peaks(835.0, 60.0),
    "NVIDIA A100-SXM4-80GB": _peaks(312.0, 19.5),
    "NVIDIA A100-SXM4-40GB": _peaks(312.0, 19.5),
    "NVIDIA A100 80GB PCIe": _peaks(312.0, 19.5),
    "NVIDIA A100-PCIE-40GB": _peaks(312.0, 19.5),
}
MATRIX_OP = re.compile(r"conv|mm|matmul|attention|linear|einsum")  # ops whose FLOPs count


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def peak_tflops(device: torch.device, precision: str, tf32: bool) -> float | None:
    """The device's dense peak for the math that `precision` runs in; None where unknown (CPUs too)."""
    mode = "tf32" if precision == "fp32" and tf32 else precision
    return PEAK_TFLOPS.get(device_name(device), {}).get(mode)


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, groups, output_mask, out_shape, **kwargs) -> int:  # fmt: skip
    """torch's count (`flop_counter.conv_backward_flop`) with the weight gradient divided by `groups`."""
    flops = 0
    if output_mask[0]:  # the input gradient, a transposed convolution by the (grouped) weight: right
        grad_input = flop_counter.get_shape(out_shape[0])
        flops += flop_counter.conv_flop_count(grad_out_shape, w_shape, grad_input, not transposed)
    if output_mask[1]:  # the weight gradient: a convolution of the input by the output gradient, per group
        t = lambda shape: [shape[1], shape[0], *shape[2:]]  # noqa: E731
        grad_weight = t(flop_counter.get_shape(out_shape[1]))
        pair = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += flop_counter.conv_flop_count(*pair, grad_weight, transposed=False) // groups
    return flops


class StepFlops(FlopCounterMode):
    """FlopCounterMode with the corrections of the module docstring, noting matrix-class ops it cannot
    count."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping={aten.convolution_backward: conv_backward_flop})
        cpu_attention = {
            "_scaled_dot_product_flash_attention_for_cpu": aten._scaled_dot_product_flash_attention,
            "_scaled_dot_product_flash_attention_for_cpu_backward": (
                aten._scaled_dot_product_flash_attention_backward
            ),
        }
        for name, like in cpu_attention.items():
            if hasattr(aten, name):
                self.flop_registry[getattr(aten, name)] = self.flop_registry[like]
        self.uncounted: set[str] = set()

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry and MATRIX_OP.search(str(func_packet)):
            self.uncounted.add(str(func_packet))
        return super()._count_flops(func_packet, out, args, kwargs)


def flops_of(fn: Callable[[], None]) -> tuple[float, set[str]]:
    counter = StepFlops()
    with counter:
        fn()
    return float(counter.get_total_flops()), counter.uncounted


def step_flops(model, x, y, attack_steps: int) -> tuple[float, float, list[str]]:
    """FLOPs of one clean training step and of one APGD-`attack_steps` training step, and the matrix-class
    ops that could not be counted. An APGD-k step is k forward + input-gradient passes, one forward without
    gradient (the last iterate) and the training step (forward and every gradient); their ratio is the
    limit of the APGD/clean time ratio. Run eagerly on the unwrapped model."""

    def forward(grad_of: str | None) -> None:
        z = x.detach().requires_grad_(grad_of == "input")
        with torch.set_grad_enabled(bool(grad_of)):
            loss = F.cross_entropy(model(z).float(), y)
        if grad_of == "input":
            loss.backward(inputs=[z])
        elif grad_of == "weights":
            loss.backward()

    (clean, missed), (input_pass, missed_input), (last, _) = (
        flops_of(functools.partial(forward, grad_of)) for grad_of in ("weights", "input", None)
    )
    model.zero_grad(set_to_none=True)
    return clean, clean + attack_steps * input_pass + last, sorted(missed | missed_input)
