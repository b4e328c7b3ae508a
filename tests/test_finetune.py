"""Fine-tuning modes (full, linear, lp_ft, bitfit, lora): each trains exactly the parameters it names (LoRA
on convolutions, on timm's Linear projections and through open_clip), LP-FT's backbone has no gradient until
epoch k, LoRA and LP-FT runs killed mid-epoch resume to the uninterrupted result, every mode chains through
run, evaluate, report and resume, the registry knows which backbones take LoRA, and bad input is one line
and exit 2 with the database untouched."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from conftest import CIFAR, EXPERIMENTS, require
from test_bad_input import check, db, toml  # noqa: F401 (db: the fixture)
from test_trainer import DiesMidEpoch, Interrupted

from rftbench import RunConfig, train
from rftbench.data.loading import ImageTensorDataset, decode_image_folder, eval_transform, make_loader
from rftbench.engine.checkpoint import load_checkpoint
from rftbench.execution.runner import build_model
from rftbench.models.build import build_backbone
from rftbench.models.finetune import add_lora, head_prefix, trainable_count, trained
from rftbench.models.registry import BACKBONES, LORA_TARGETS
from rftbench.results.store import Store

BASE = RunConfig(backbone="cifar_resnet20", dataset="cifar10-jpeg", pretrained=False, setting="fix",
                 eps="8/255", epochs=1, batch_size=20, lr=1e-3, warmup_epochs=0, resolution=32,
                 train_attack_steps=1, eval_attack_steps=1, val_adv_samples=0)  # fmt: skip
MODES = {
    "full": BASE,
    "linear": dataclasses.replace(BASE, finetune="linear"),
    "bitfit": dataclasses.replace(BASE, finetune="bitfit"),
    "lp_ft": dataclasses.replace(BASE, finetune="lp_ft", lp_ft_epochs=1, epochs=2),
    "lora": dataclasses.replace(BASE, backbone="mobilenetv2_100", finetune="lora", lora_r=2, lora_alpha=4),
}
# LoRA on Linear projections (timm's ViT attention and MLP) and through open_clip (ClipCNX's timm trunk):
# the mobilenet's targets are 1×1 convolutions
MODES |= {f"lora:{name}": dataclasses.replace(MODES["lora"], backbone=name) for name in ("ViT", "ClipCNX")}


@pytest.fixture(scope="module")
def loaders():
    images, labels, _ = decode_image_folder(require(CIFAR / "train"), 32, per_class=6)
    data = ImageTensorDataset(images, labels, eval_transform())
    return make_loader(data, 20, shuffle=True), make_loader(data, 20, shuffle=False)


def model_of(config: RunConfig) -> torch.nn.Module:
    return build_model(config, {"weights": None}, num_classes=10)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(before: dict, model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def fit(config, model, loaders, run_dir=None, callback=None, train_loader=None):
    train_loader, eval_loader = train_loader or loaders[0], loaders[1]
    return train(config, model, train_loader, eval_loader, eval_loader, callback=callback, run_dir=run_dir)


@pytest.mark.parametrize("mode", ["full", "linear", "bitfit", "lora", "lora:ViT", "lora:ClipCNX"])
def test_each_mode_trains_exactly_the_parameters_it_names(mode, loaders):
    config = MODES[mode]
    model = model_of(config)
    before = snapshot(model)
    names = set(trained(model, config))
    fit(config, model, loaders)
    head = {n for n, _ in model.named_parameters() if n.startswith(head_prefix(config))}
    mode = mode.split(":")[0]
    expected = {
        "full": {n for n, _ in model.named_parameters()},
        "linear": head,
        "bitfit": head | {n for n, _ in model.named_parameters() if n.endswith(".bias")},
        "lora": head | {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n},
    }[mode]
    assert names == expected and changed(before, model) == expected
    assert all((p.grad is None) == (n not in expected) for n, p in model.named_parameters())
    if mode == "linear":  # a probe reads the pretrained features: no running statistic moved either
        buffers = [n for n, _ in model.named_buffers() if "running" in n]
        assert buffers and all(torch.equal(before[n], model.state_dict()[n]) for n in buffers)
    if mode == "bitfit":
        assert any(n.endswith(".bias") and not n.startswith("1.linear.") for n in expected)
    if mode == "lora":
        assert len(expected - head) > 0 and not any("base_layer" in n for n in expected)
    assert trainable_count(model, config) == sum(
        p.numel() for n, p in model.named_parameters() if n in expected
    )


@pytest.mark.parametrize("objective", ["at", "trades"])
def test_a_probe_attacked_in_train_mode_keeps_the_backbones_statistics(objective, loaders):
    """attack_mode = "train" puts a fine-tuned model in train mode for the attack; a probed backbone stays
    in eval mode all the same (its BatchNorm statistics are the pretrained model's)."""
    config = dataclasses.replace(MODES["linear"], attack_mode="train", objective=objective)
    model = model_of(config)
    before = snapshot(model)
    fit(config, model, loaders)
    stats = [n for n in before if "running" in n]
    assert stats and all(torch.equal(before[n], model.state_dict()[n]) for n in stats)
    assert changed(before, model) == {"1.linear.weight", "1.linear.bias"}


def test_full_leaves_what_a_library_caller_froze_frozen(loaders):
    config = MODES["full"]
    model = model_of(config)
    frozen = {n for n, p in model.named_parameters() if n.startswith("1.conv1.") or n.startswith("1.bn1.")}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    before = snapshot(model)
    fit(config, model, loaders)
    assert frozen and changed(before, model) == {n for n, _ in model.named_parameters()} - frozen
    everything = sum(p.numel() for p in model.parameters())
    assert trainable_count(model, config) == everything - sum(
        p.numel() for n, p in model.named_parameters() if n in frozen
    )


def test_lp_ft_trains_the_head_alone_then_everything(loaders):
    config = MODES["lp_ft"]
    model = model_of(config)
    before, after_probe, graded = snapshot(model), {}, {}

    def probe_ended(metrics):  # after epoch 0: the weights, and which parameters have had a gradient
        if metrics["epoch"] == 0:
            after_probe.update(snapshot(model))
            graded.update({n: p.grad is not None for n, p in model.named_parameters()})

    fit(config, model, loaders, callback=probe_ended)
    head = {n for n, _ in model.named_parameters() if n.startswith("1.linear.")}
    probed = {n for n, p in model.named_parameters() if not torch.equal(before[n], after_probe[n])}
    assert probed == head and {n for n, g in graded.items() if g} == head  # the backbone's never computed
    assert all(p.grad is not None for p in model.parameters())  # from epoch k on, every gradient
    assert all(torch.equal(before[n], after_probe[n]) for n in before if "running" in n)  # eval-mode backbone
    assert changed(after_probe, model) == {n for n, _ in model.named_parameters()}
    assert set(trained(model, config, epoch=0)) == head and trainable_count(model, config) == sum(
        p.numel() for p in model.parameters()
    )


def test_lora_starts_at_the_pretrained_function_and_counts_its_adapters():
    config = MODES["lora"]
    torch.manual_seed(0)
    plain = build_backbone("mobilenetv2_100", 10, pretrained=False, size=32).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = plain(x)
        adapted = add_lora(plain, config)  # in place: B = 0, so the function is unchanged
        assert torch.allclose(adapted(x), expected, atol=1e-6)
    adapters = [(n, p) for n, p in adapted.named_parameters() if ".lora_" in n]
    assert adapters and all(p.shape[0] == 2 or p.shape[1] == 2 for _, p in adapters)  # rank 2
    head = sum(p.numel() for n, p in adapted.named_parameters() if n.startswith("1.classifier."))
    assert trainable_count(adapted, config) == head + sum(p.numel() for _, p in adapters)


@pytest.mark.parametrize("mode", ["lora", "lp_ft"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(mode, loaders, tmp_path):
    """LoRA (its adapters checkpointed) under TRADES, and LP-FT killed in epoch 1, its first with every
    parameter trained (the backbone joins the optimiser's steps after the checkpoint of the probe)."""
    config = dataclasses.replace(MODES[mode], epochs=2, objective="trades")
    history, killed = [], []
    model = model_of(config)
    result = fit(config, model, loaders, run_dir=tmp_path / "whole", callback=history.append)
    with pytest.raises(Interrupted):
        fit(config, model_of(config), loaders, run_dir=tmp_path / "killed", callback=killed.append,
            train_loader=DiesMidEpoch(loaders[0], epoch=1, after=1))  # fmt: skip
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["epoch"] == 0 and any(".lora_B." in k for k in state["model"]) == (mode == "lora")
    resumed, again = [], model_of(config)
    result_again = fit(config, again, loaders, run_dir=tmp_path / "killed", callback=resumed.append)
    drop = ("epoch_seconds", "images_per_second", "seconds")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(history)
    assert {k: v for k, v in result_again.items() if k not in drop} == {
        k: v for k, v in result.items() if k not in drop
    }
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())
    final = load_checkpoint(tmp_path / "killed" / "final.pt")  # what `evaluate` rebuilds and loads
    rebuilt = build_model(config, {"weights": None}, 10, pretrained=False)
    rebuilt.load_state_dict(final["model"])


def test_the_registry_knows_which_backbones_take_lora():
    """`BackboneSpec.lora` (what grids check before anything runs) matches the real module trees."""
    for name, spec in BACKBONES.items():
        model = build_backbone(name, 2, pretrained=False, size=spec.size if spec.size <= 32 else 64)
        found = [n for n, _ in model[1].named_modules() if re.fullmatch(LORA_TARGETS, n)]
        assert bool(found) == spec.lora, (name, found[:3])
        kinds = {type(m).__name__ for n, m in model[1].named_modules() if n in found}
        assert kinds <= {"Linear", "Conv2d"}, (name, kinds)  # what peft's LoRA layers wrap


def test_bad_variants_are_one_line_and_exit_2(db, tmp_path):  # noqa: F811 (db: the fixture)
    runs = tmp_path / "runs"

    def run(backbone="cifar_resnet20"):
        where = ["--db", str(db), "--runs-dir", str(runs), "--experiments", str(EXPERIMENTS)]
        return [
            "run",
            "--grid",
            "smoke",
            "--backbone",
            backbone,
            "--dataset",
            "synthetic",
            "--eps",
            "8/255",
            *where,
        ]

    lora_r50 = (
        '[grids.g]\nbackbones = ["R50"]\ndatasets = ["synthetic"]\neps = ["8/255"]\nfinetune = "lora"\n'
    )
    cases = [
        (
            [*run(), "--finetune", "lora"],
            'finetune = "lora" needs attention or MLP projections, which cifar_resnet20',
        ),
        ([*run(), "--objective", "trades", "--beta", "-1"], "beta must be a number >= 0"),
        (
            [*run(), "--finetune", "lp_ft", "--lp-ft-epochs", "3"],
            "set lp_ft_epochs between 1 and epochs - 1 = 2",
        ),
        ([*run(), "--finetune", "lp_ft"], "set lp_ft_epochs between 1 and epochs - 1 = 2, got 0"),
        (
            [*run("mobilenetv2_100"), "--finetune", "lora", "--lora-r", "0"],
            "lora needs lora_r >= 1 and lora_alpha > 0, got 0, 16.0",
        ),  # fmt: skip
        ([*run(), "--objective", "pgd"], "'pgd' is not one of 'at', 'trades', 'mart'"),
        (
            [*run(), "--finetune", "prompt"],
            "'prompt' is not one of 'full', 'linear', 'lp_ft', 'bitfit', 'lora'",
        ),
        (
            [
                "run-grid",
                "--grid",
                "g",
                "--experiments",
                toml(tmp_path, "l.toml", lora_r50),
                "--db",
                str(db),
                "--runs-dir",
                str(runs),
            ],
            "which R50 has none of",
        ),  # fmt: skip
    ]
    check(cases, db, runs)


CHAINS = {  # backbone, flags: every mode and objective once
    "trades+lora": ("mobilenetv2_100", ["--objective", "trades", "--finetune", "lora", "--lora-r", "2"]),
    "mart+lp_ft": ("cifar_resnet20", ["--objective", "mart", "--finetune", "lp_ft", "--lp-ft-epochs", "1"]),
    "linear": ("cifar_resnet20", ["--finetune", "linear"]),
    "bitfit": ("cifar_resnet20", ["--finetune", "bitfit"]),
}


@pytest.mark.parametrize("variant", list(CHAINS))
def test_a_variant_run_chains_through_run_evaluate_report_and_resume(variant, tmp_path):
    """As users chain it: `run` with the variant flags, `evaluate` its final weights (the model rebuilt in
    its mode: adapters, frozen parts), `report` naming the variant and its trainable parameters, `resume`
    with nothing to do."""
    from typer.testing import CliRunner

    from rftbench.cli import app

    backbone, extra = CHAINS[variant]
    where = ["--db", str(tmp_path / "r.db")]
    runs = ["--runs-dir", str(tmp_path / "runs")]
    flags = ["--grid", "smoke", "--experiments", str(EXPERIMENTS), "--backbone", backbone,
             "--dataset", "synthetic", "--eps", "8/255", *extra]  # fmt: skip
    cli = CliRunner()
    result = cli.invoke(app, ["run", *flags, *where, *runs])
    assert result.exit_code == 0, result.output
    (run,) = Store.open(str(tmp_path / "r.db")).runs()
    config = RunConfig.from_json(run.config)
    assert config.variant.startswith(variant) and f"fix+{config.variant}" in result.output
    evaluated = cli.invoke(app, ["evaluate", run.id, "--steps", "2", *where, *runs])
    assert evaluated.exit_code == 0 and "stored 1 new evaluation row" in evaluated.output, evaluated.output
    report = cli.invoke(app, ["report", "--table", "main", "--format", "csv", *where])
    assert report.exit_code == 0 and f"fix+{config.variant}" in report.output, report.output
    model = build_model(config, {"weights": None}, 10, pretrained=False)
    count = trainable_count(model, config)
    assert run.provenance["trainable_params"] == count and str(count) in report.output
    resumed = cli.invoke(app, ["resume", *where, *runs])
    assert resumed.exit_code == 0 and "0 run(s) to continue" in resumed.output, resumed.output
