"""The GPU speed paths, checked on CPU: the device-side augmentation against torchvision image by image,
AdamW's parameter groups against hand-listed names, a device-augmented run killed mid-epoch and resumed,
and torch.compile (no recompilation after the first epoch; compiled and eager agree)."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from conftest import CIFAR, require
from torchvision.transforms.v2 import functional as F

from rftbench import RunConfig, RuntimeOptions, train
from rftbench.data.loading import (
    JITTER_ORDERS,
    ImageTensorDataset,
    augment_batch,
    augment_params,
    decode_image_folder,
    make_loader,
)
from rftbench.engine.compiled import CompiledModel
from rftbench.engine.trainer import epoch_seed, param_groups
from rftbench.models.build import build_backbone
from rftbench.models.nets import with_normalization

CONFIG = RunConfig(backbone="test_resnet", dataset="cifar10-jpeg", setting="fix", eps="4/255", epochs=2,
                   batch_size=24, lr=1e-3, warmup_epochs=0, resolution=32, train_attack_steps=2,
                   eval_attack_steps=2, val_adv_samples=20, augmentation="device")  # fmt: skip
TIMING_KEYS = ("epoch_seconds", "images_per_second", "seconds")


@pytest.fixture(scope="module")
def data():
    """uint8 datasets (no transform), as the runner builds them for device-side augmentation; 50 training
    images in batches of 24 end in a ragged batch of 2."""
    images, labels, _ = decode_image_folder(require(CIFAR / "train"), 32, per_class=5)
    held, held_labels, _ = decode_image_folder(require(CIFAR / "test"), 32, per_class=3)
    return {"train": ImageTensorDataset(images, labels, None),
            "val": ImageTensorDataset(held[:20], held_labels[:20], None),
            "test": ImageTensorDataset(held[20:], held_labels[20:], None)}  # fmt: skip


def model_for(config: RunConfig) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    size = {"img_size": config.resolution} if "vit" in config.backbone else {}
    return with_normalization(
        timm.create_model(config.backbone, num_classes=10, **size), (0.5,) * 3, (0.5,) * 3
    )


def run(config, data, run_dir=None, runtime=RuntimeOptions(), callback=None, train_loader=None):
    history = []
    loaders = {name: make_loader(ds, config.batch_size, shuffle=name == "train") for name, ds in data.items()}
    result = train(config, model_for(config), train_loader or loaders["train"], loaders["val"],
                   loaders["test"], callback=callback or history.append, run_dir=run_dir,
                   runtime=runtime)  # fmt: skip
    return history, result


def without_timings(rows):
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING_KEYS}  # noqa: E731
    return strip(rows) if isinstance(rows, dict) else [strip(m) for m in rows]


def test_the_batch_augmentation_is_torchvisions_image_by_image():
    """Flip, ColorJitter(0.25, 0.25, 0.25) in each image's drawn order and a ±2° nearest rotation, on the
    whole batch at once, equal torchvision's functional ops applied to each image with its parameters."""
    x = torch.randint(0, 256, (32, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    params = augment_params(32, torch.Generator().manual_seed(2))
    flips, factors, orders, angles = params[:, 0], params[:, 1:4], params[:, 4], params[:, 5]
    assert set(flips.tolist()) == {0.0, 1.0} and set(orders.long().tolist()) == set(range(6))
    assert factors.min() >= 0.75 and factors.max() <= 1.25 and angles.abs().max() <= 2.0
    out = augment_batch(x, params)
    assert out.dtype == torch.float32 and out.shape == x.shape
    adjust = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
    for i in range(len(x)):
        image = x[i].float() / 255
        image = F.horizontal_flip(image) if flips[i] else image
        for op in JITTER_ORDERS[int(orders[i])].tolist():
            image = adjust[op](image, float(factors[i, op]))
        image = F.rotate(image, float(angles[i]), interpolation=F.InterpolationMode.NEAREST)
        torch.testing.assert_close(out[i], image, rtol=0, atol=1e-6)
    # the draws depend on (seed, epoch) alone, through a generator of their own
    draw = lambda seed, epoch: augment_params(8, torch.Generator().manual_seed(epoch_seed(seed, epoch, 1)))  # noqa: E731
    assert torch.equal(draw(0, 3), draw(0, 3)) and not torch.equal(draw(0, 3), draw(0, 4))
    assert epoch_seed(0, 3, stream=1) != epoch_seed(0, 3) == epoch_seed(0, 3, stream=0)


def test_parameter_groups_follow_the_run_config():
    model = build_backbone("cifar_resnet20", 10, pretrained=False)
    names = {id(p): n for n, p in model.named_parameters()}
    group_names = lambda groups: [sorted(names[id(p)] for p in g["params"]) for g in groups]  # noqa: E731

    default = param_groups(model, RunConfig(backbone="cifar_resnet20", dataset="synthetic", lr=1e-3))
    assert len(default) == 1 and [names[id(p)] for p in default[0]["params"]] == list(names.values())
    assert (default[0]["lr"], default[0]["weight_decay"]) == (1e-3, 0.05)  # as release 0.1's AdamW

    config = RunConfig(backbone="cifar_resnet20", dataset="synthetic", lr=1e-3, weight_decay=0.1,
                       decay_norm_and_bias=False, head_lr_scale=10.0)  # fmt: skip
    groups = param_groups(model, config)
    by_kind = {(g["weight_decay"], g["lr"]): n for g, n in zip(groups, group_names(groups))}
    convs = sorted(n for n in names.values() if "conv" in n and n.endswith("weight"))
    bns = sorted(n for n in names.values() if ".bn" in n or n.startswith("1.bn"))
    assert by_kind == {(0.1, 1e-3): convs, (0.0, 1e-3): bns, (0.1, 1e-2): ["1.linear.weight"],
                       (0.0, 1e-2): ["1.linear.bias"]}  # fmt: skip
    assert len(convs) == 19 and len(bns) == 38  # 19 conv layers, each followed by a BatchNorm
    vit = build_backbone("ViT", 5, pretrained=False, size=32)
    vit_groups = param_groups(vit, RunConfig(backbone="ViT", dataset="Cars", decay_norm_and_bias=False))
    undecayed = {n for g in vit_groups if g["weight_decay"] == 0 for n, p in vit.named_parameters()
                 if any(p is q for q in g["params"])}  # fmt: skip
    assert {"1.pos_embed", "1.cls_token", "1.norm.weight", "1.head.bias"} <= undecayed
    assert "1.blocks.0.attn.qkv.weight" not in undecayed and "1.head.weight" not in undecayed


def test_a_device_augmented_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(data, tmp_path):
    from test_trainer import DiesMidEpoch, Interrupted

    assert CONFIG.run_id != RunConfig(**{**CONFIG.to_dict(), "augmentation": "loader"}).run_id
    whole = run(CONFIG, data, tmp_path / "whole")
    assert whole[0][0]["train_loss"] != whole[0][1]["train_loss"]
    loader = make_loader(data["train"], CONFIG.batch_size, shuffle=True)
    with pytest.raises(Interrupted):
        run(CONFIG, data, tmp_path / "cut", train_loader=DiesMidEpoch(loader, epoch=1, after=1))
    resumed = run(CONFIG, data, tmp_path / "cut")
    assert without_timings(resumed[0]) == without_timings(whole[0])
    assert without_timings(resumed[1]) == without_timings(whole[1])


def test_compiled_training_compiles_once_and_agrees_with_eager(data):
    """After the first epoch nothing compiles again: APGD's iterations, the train/eval flips, the grad-free
    last APGD step, the shrinking batches of the early exit and the ragged last batches reuse at most four
    graphs (dynamo's guards, here traced through aot_eager to keep the test fast), and the run reports them.
    The compiled run's numbers equal eager's to rounding."""
    from torch._dynamo.utils import counters

    config = RunConfig(**{**CONFIG.to_dict(), "backbone": "test_vit"})
    graphs, compiled = [], []

    def record(metrics):
        graphs.append(counters["stats"]["unique_graphs"])
        compiled.append(metrics)

    runtime = RuntimeOptions(compile=True, compile_backend="aot_eager")
    compiled_result = run(config, data, runtime=runtime, callback=record)[1]
    assert graphs[0] > 0 and graphs[-1] == graphs[0], f"graphs compiled by the end of each epoch: {graphs}"
    assert 0 < compiled_result["compile"]["graphs"] <= 4, compiled_result["compile"]
    assert compiled_result["compile"]["compile_seconds"] > 0
    eager, eager_result = run(config, data)
    assert [m["train_loss"] for m in compiled] == pytest.approx([m["train_loss"] for m in eager], rel=1e-4)
    assert compiled_result["clean"] == pytest.approx(eager_result["clean"], abs=0.05)


@pytest.mark.slow
def test_inductor_agrees_with_eager_and_a_new_batch_size_reuses_its_graph():
    """The real compiler (inductor, C++ on CPU): logits and APGD's input gradients equal eager's, and a
    second batch size compiles nothing new."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = with_normalization(
        timm.create_model("test_vit", num_classes=10, img_size=32), (0.5,) * 3, (0.5,) * 3
    )
    compiled = CompiledModel(model.eval())
    for n in (8, 5):
        x = torch.rand(n, 3, 32, 32, requires_grad=True)
        grads = [torch.autograd.grad(net(x).logsumexp(1).sum(), x)[0] for net in (model, compiled)]
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        if n == 8:
            after_first = counters["stats"]["unique_graphs"]
    assert after_first > 0 and counters["stats"]["unique_graphs"] == after_first


def test_the_audit_catches_copies_from_unpinned_host_memory():
    """`UnpinnedCopies` (which benchmarks/sync_audit.py runs over a training epoch on a GPU) names every
    copy from pageable host memory to another device, through `to` or `copy_`, and nothing else."""
    from rftbench.data.loading import to_device
    from rftbench.engine.audit import UnpinnedCopies

    with UnpinnedCopies() as audit:
        torch.rand(3).to("meta", non_blocking=True)  # host -> another device from pageable memory
        torch.empty(3, device="meta").copy_(torch.rand(3))
        torch.rand(3).to("cpu", non_blocking=True)  # no device change: no copy to count
        torch.rand(3).double()
        to_device(torch.rand(3), torch.device("cpu"))
    assert len(audit.found) == 2 and all("test_speed_paths.py:" in where for where in audit.found)


def test_the_training_step_reads_nothing_back_from_the_device(data):
    """No operator of a training step's own device work (the device-side augmentation, the APGD attack as
    the trainer calls it, the forward and backward) reads a device value on the host: on a GPU each would
    stall the loop once per step (release 0.3's attack result, built with boolean masks, had four). The
    loader and the optimizer are left out: on a CPU their host-side reads (a sampler's seed, AdamW's step
    count, which CUDA's fused AdamW keeps on the device) look the same as a device read."""
    from rftbench.attacks.apgd import apgd
    from rftbench.data.loading import to_unit_float
    from rftbench.engine.audit import SyncingOps
    from rftbench.engine.policy import KeptWeights

    model = model_for(CONFIG).train()
    x, y = next(iter(make_loader(data["train"], CONFIG.batch_size, shuffle=False)))
    params = augment_params(len(y), torch.Generator().manual_seed(0))
    ema = KeptWeights(dataclasses.replace(CONFIG, weights_policy="ema"), model)  # its per-step update too
    with SyncingOps() as audit:
        x = augment_batch(to_unit_float(x), params)
        x = apgd(model, x, y, 4 / 255, CONFIG.train_attack_steps, random_start=CONFIG.attack_random_start,
                 mode=CONFIG.attack_mode)  # fmt: skip
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ema.step()
    assert audit.found == []
    with SyncingOps() as audit:  # the audit sees a read where there is one
        bool(y.any())
    assert audit.found == ["aten._local_scalar_dense.default"]
