"""The trainer on real data: a two-epoch run of a tiny timm model on CIFAR-10 JPEGs, determinism, and a
run killed mid-epoch then resumed, which must equal the uninterrupted run."""

from __future__ import annotations

import dataclasses
import math

import pytest
import timm
import torch
from conftest import CIFAR, require

from rftbench import RunConfig, RuntimeOptions, train
from rftbench.core.metrics import EvalProtocol
from rftbench.core.schedules import adaptive_alphas
from rftbench.data.loading import (
    ImageTensorDataset,
    covering_loader,
    decode_image_folder,
    eval_transform,
    make_loader,
    train_transform,
)
from rftbench.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rftbench.models.nets import with_normalization

CONFIG = RunConfig(backbone="test_resnet", dataset="cifar10-jpeg", setting="sched", eps="8/255", t1=0.5, t2=1,
                   schedule_granularity="step", epochs=2, batch_size=32, lr=1e-3, warmup_epochs=0.5,
                   resolution=32, train_attack_steps=2, eval_attack_steps=2, val_adv_samples=40)  # fmt: skip
TIMING_KEYS = ("epoch_seconds", "images_per_second", "seconds")


@pytest.fixture(scope="module")
def data():
    train_images, train_labels, _ = decode_image_folder(require(CIFAR / "train"), 32, per_class=16)
    held_images, held_labels, _ = decode_image_folder(require(CIFAR / "test"), 32, per_class=16)
    return {
        "train": ImageTensorDataset(train_images, train_labels, train_transform()),
        "val": ImageTensorDataset(held_images[0::2], held_labels[0::2], eval_transform()),
        "test": ImageTensorDataset(held_images[1::2], held_labels[1::2], eval_transform()),
    }


def build_model(config: RunConfig) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    return with_normalization(timm.create_model(config.backbone, num_classes=10), (0.5,) * 3, (0.5,) * 3)


def run(config, data, run_dir=None, train_loader=None):
    history = []
    loaders = {name: make_loader(ds, config.batch_size, shuffle=name == "train") for name, ds in data.items()}
    model = build_model(config)
    result = train(config, model, train_loader or loaders["train"], loaders["val"], loaders["test"],
                   callback=history.append, run_dir=run_dir)  # fmt: skip
    return history, result, model


def without_timings(history):
    if isinstance(history, dict):
        return {k: v for k, v in history.items() if k not in TIMING_KEYS}
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    return run(CONFIG, data, tmp_path_factory.mktemp("uninterrupted"))


def test_two_epochs_report_every_metric_through_the_callback(uninterrupted, tmp_path_factory):
    history, result, _ = uninterrupted
    assert [m["epoch"] for m in history] == [0, 1]
    keys = {"epoch", "eps", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_adv_loss"}
    keys |= {"val_adv_acc", "val_adv_eps", "val_adv_subset", "epoch_seconds", "images_per_second"}
    assert all(set(m) == keys for m in history)
    assert history[0]["eps"] == 0.0 and history[1]["eps"] == pytest.approx(8 / 255)  # hinge T1=0.5, T2=1
    assert history[0]["lr"] < history[1]["lr"]  # warm-up: the epoch's starting learning rate
    for m in history:
        assert (
            0 <= m["train_acc"] <= 1
            and 0 <= m["val_acc"] <= 1
            and 0 <= m["val_adv_acc"] <= m["val_acc"] + 0.2
        )
        assert math.isfinite(m["train_loss"]) and m["images_per_second"] > 0 and m["val_adv_eps"] == "8/255"
    assert result["n"] == 80 and result["run_id"] == CONFIG.run_id
    assert all(m["val_adv_subset"] == "stratified" for m in history)
    # the final evaluation: the paper protocol with the run's own steps, in fp32, on record
    assert (
        result["protocol"]
        == EvalProtocol("paper", steps=CONFIG.eval_attack_steps, precision="fp32").as_dict()
    )
    (budget,) = result["budgets"]
    assert budget["budget"] == "8/255" and len(budget["accuracies"]) == 9
    assert budget["clean"] == result["clean"] and budget["adv"] == budget["accuracies"][-1]
    assert budget["adv"] <= budget["eadv"] <= budget["clean"]
    assert result["attacks_naive"] == 8 * 80 and result["attacks_run"] <= result["attacks_naive"]


def test_checkpoints_load_with_weights_only_and_hold_the_final_weights(uninterrupted, tmp_path_factory):
    run_dir = tmp_path_factory.getbasetemp() / "uninterrupted0"
    last, final = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "final.pt")
    assert last["epoch"] == 1 and last["config"] == CONFIG.canonical_json()
    assert without_timings(last["history"]) == without_timings(uninterrupted[0])
    assert not any(k.startswith("_orig_mod.") for k in last["model"])
    model = uninterrupted[2]
    assert all(torch.equal(final["model"][k], v) for k, v in model.state_dict().items())
    assert final["evaluation"] == uninterrupted[1]
    assert not list(run_dir.glob("*.tmp"))


def test_same_seed_gives_identical_metrics(uninterrupted, data):
    history, result, _ = run(CONFIG, data)
    assert without_timings(history) == without_timings(uninterrupted[0])
    assert without_timings(result) == without_timings(uninterrupted[1])


class Interrupted(Exception):
    pass


class DiesMidEpoch:
    """A train loader that kills the run after `after` batches of epoch `epoch` (as a SIGKILL would)."""

    def __init__(self, loader, epoch, after):
        self.loader, self.epoch, self.after, self.epochs_seen = loader, epoch, after, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        epoch, self.epochs_seen = self.epochs_seen, self.epochs_seen + 1
        for i, batch in enumerate(self.loader):
            if epoch == self.epoch and i == self.after:
                raise Interrupted
            yield batch


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(uninterrupted, data, tmp_path):
    loader = make_loader(data["train"], CONFIG.batch_size, shuffle=True)
    seen = []
    with pytest.raises(Interrupted):
        train(CONFIG, build_model(CONFIG), DiesMidEpoch(loader, epoch=1, after=2),
              make_loader(data["val"], 32, shuffle=False), make_loader(data["test"], 32, shuffle=False),
              callback=seen.append, run_dir=tmp_path)  # fmt: skip
    assert [m["epoch"] for m in seen] == [0] and load_checkpoint(tmp_path / "last.pt")["epoch"] == 0

    history, result, model = run(CONFIG, data, tmp_path)  # a fresh process would do exactly this
    assert [m["epoch"] for m in history] == [0, 1]  # epoch 0 replayed from the checkpoint, epoch 1 re-run
    assert without_timings(history) == without_timings(uninterrupted[0])
    assert without_timings(result) == without_timings(uninterrupted[1])
    assert all(torch.equal(v, uninterrupted[2].state_dict()[k]) for k, v in model.state_dict().items())


def test_resume_refuses_a_checkpoint_of_another_config(uninterrupted, data, tmp_path_factory):
    run_dir = tmp_path_factory.getbasetemp() / "uninterrupted0"
    other = RunConfig(**{**CONFIG.to_dict(), "seed": 1, "eval_budgets": CONFIG.eval_budgets})
    with pytest.raises(ValueError, match="holds run .* not run"):
        run(other, data, run_dir)


def test_a_truncated_checkpoint_gives_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be read .* delete it"):
        load_checkpoint(path)


def test_gpu_options_run_on_cpu_too(data):
    """bf16 autocast and channels_last (off by default on CPU) keep the trainer's contract."""
    config = RunConfig(**{**CONFIG.to_dict(), "precision": "bf16", "epochs": 1, "t1": 0, "t2": 1,
                          "eval_budgets": ("2/255",)})  # fmt: skip
    loaders = [make_loader(data[name], 32, shuffle=name == "train") for name in ("train", "val", "test")]
    history = []
    result = train(config, build_model(config), *loaders, callback=history.append,
                   runtime=RuntimeOptions(channels_last=True))  # fmt: skip
    assert config.setting == "linear" and len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert result["protocol"]["precision"] == "fp32"  # trained in bf16, scored in fp32 unless asked otherwise
    assert [b["budget"] for b in result["budgets"]] == ["2/255"] and len(
        result["budgets"][0]["accuracies"]
    ) == 3


def test_adversarial_validation_covers_every_class_and_is_fixed_by_the_split_seed(data):
    """The first images of a split sorted by class would cover only some classes (here: 3 of 10)."""
    loader = make_loader(data["val"], 32, shuffle=False)

    def drawn(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(covering_loader(loader, 20, seed))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    images, labels = drawn(CONFIG.split_seed)
    assert len(labels) == 20 and torch.bincount(labels, minlength=10).tolist() == [2] * 10
    assert set(data["val"].labels[:20].tolist()) == {0, 1, 2}  # what the old prefix took
    assert torch.equal(drawn(CONFIG.split_seed)[0], images)  # fixed by the split seed
    assert not torch.equal(drawn(CONFIG.split_seed + 1)[0], images)


def test_a_checkpoint_holding_four_gpus_rng_states_resumes(uninterrupted, data, tmp_path):
    """Release 0.1 saved the RNG state of every visible GPU; such a checkpoint must resume anywhere, and a
    new one holds at most the training device's state (CUDA: tests/test_trainer.py::…_on_one_gpu)."""
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(CONFIG, build_model(CONFIG), DiesMidEpoch(make_loader(data["train"], 32, shuffle=True), 1, 1),
              make_loader(data["val"], 32, shuffle=False), make_loader(data["test"], 32, shuffle=False),
              run_dir=run_dir)  # fmt: skip
    state = load_checkpoint(run_dir / "last.pt")
    assert state["rng"]["cuda"] == []  # trained on the CPU: no GPU state at all
    state["rng"]["cuda"] = [
        torch.get_rng_state()[:816].clone() for _ in range(4)
    ]  # as 4 visible GPUs left it
    save_checkpoint(run_dir / "last.pt", state)
    history, result, _ = run(CONFIG, data, run_dir)
    assert without_timings(history) == without_timings(uninterrupted[0])
    assert without_timings(result) == without_timings(uninterrupted[1])


def test_the_cuda_rng_state_is_the_training_devices_alone(monkeypatch):
    """Without a GPU here, torch's CUDA generator calls are recorded instead (4 GPUs visible): a checkpoint
    holds the training device's state only, and restores it to the device the run now trains on."""
    from rftbench.engine.checkpoint import rng_state, set_rng_state

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    state_of = lambda device="cuda": torch.tensor([torch.device(device).index or 0])  # noqa: E731
    monkeypatch.setattr(torch.cuda, "get_rng_state", state_of)
    restored = []
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device))
    )
    state = rng_state("cuda:2")
    assert [t.tolist() for t in state["cuda"]] == [[2]]  # one state, whatever the number of visible GPUs
    set_rng_state(state, "cuda")
    set_rng_state({**state, "cuda": [torch.tensor([7])] * 4}, "cuda:0")  # release 0.1's list of every GPU
    set_rng_state(state, "cpu")  # a CPU resume ignores it
    assert [(t.tolist(), str(d)) for t, d in restored] == [([2], "cuda"), ([7], "cuda:0")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (none was lent to check it on)")
def test_a_checkpoint_from_four_gpus_resumes_on_one_gpu(tmp_path):
    from rftbench.engine.checkpoint import rng_state, set_rng_state

    state = rng_state("cuda")
    assert len(state["cuda"]) == 1
    set_rng_state({**state, "cuda": [torch.cuda.get_rng_state(0)] * 4}, "cuda")  # release-0.1 form, 4 GPUs
    set_rng_state(state, "cuda")


def test_adaptive_follows_the_validation_history_and_a_killed_run_replays_it(data, tmp_path):
    """The trainer hands `adaptive` the validation accuracies of the epochs before: the stored ε of every
    epoch is the rule applied to the stored history, and a run killed after epoch 1 resumes to the same ε
    and the same result (the history comes back from the checkpoint)."""
    config = dataclasses.replace(CONFIG, setting="adaptive", t1=None, t2=None, schedule_granularity="epoch",
                                 epochs=4)  # fmt: skip
    history, result, _ = run(config, data, tmp_path / "whole")
    accuracies = [m["val_acc"] for m in history]
    alphas = adaptive_alphas(accuracies[:-1], config.epochs)
    assert [m["eps"] for m in history] == pytest.approx([a * config.eps_value for a in alphas])
    assert alphas[:2] == [0, 0] and alphas[-1] == 1  # T1 = 1 at the latest (4 epochs), ε_g by epoch 3
    loader = make_loader(data["train"], config.batch_size, shuffle=True)
    with pytest.raises(Interrupted):
        train(config, build_model(config), DiesMidEpoch(loader, epoch=2, after=1),
              make_loader(data["val"], 32, shuffle=False), make_loader(data["test"], 32, shuffle=False),
              run_dir=tmp_path / "killed")  # fmt: skip
    resumed, again, _ = run(config, data, tmp_path / "killed")
    assert without_timings(resumed) == without_timings(history)
    assert without_timings(again) == without_timings(result)


def test_a_run_checkpointed_every_other_epoch_replays_the_epochs_since_to_the_same_numbers(data, tmp_path):
    """`checkpoint_every=2` over 3 epochs writes after epochs 1 and 2 (the last, always). Killed in epoch 2,
    the run resumes from epoch 1's checkpoint; killed in epoch 1, from scratch: both end with the numbers
    of a run checkpointed every epoch."""
    config = dataclasses.replace(CONFIG, epochs=3)
    whole = run(config, data, tmp_path / "whole")
    sparse = RuntimeOptions(checkpoint_every=2)
    loaders = {name: make_loader(ds, config.batch_size, shuffle=name == "train") for name, ds in data.items()}
    for epoch, saved in ((2, 1), (1, None)):
        run_dir, seen = tmp_path / f"killed-in-{epoch}", []
        with pytest.raises(Interrupted):
            train(config, build_model(config), DiesMidEpoch(loaders["train"], epoch=epoch, after=1),
                  loaders["val"], loaders["test"], callback=seen.append, run_dir=run_dir,
                  runtime=sparse)  # fmt: skip
        assert [m["epoch"] for m in seen] == list(range(epoch))
        last = run_dir / "last.pt"
        assert (load_checkpoint(last)["epoch"] if last.exists() else None) == saved
        history, model = [], build_model(config)
        result = train(config, model, loaders["train"], loaders["val"], loaders["test"],
                       callback=history.append, run_dir=run_dir, runtime=sparse)  # fmt: skip
        assert [m["epoch"] for m in history] == [0, 1, 2]
        assert without_timings(history) == without_timings(whole[0])
        assert without_timings(result) == without_timings(whole[1])
        assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2
