"""Checkpoints off the training loop's critical path (`CheckpointWriter`), the checkpoint policy
(`checkpoint_due`), and its flags from the command line to every worker."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
from conftest import EXPERIMENTS
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig, RuntimeOptions, RuntimeOptionsError
from rftbench.engine import checkpoint
from rftbench.engine.checkpoint import (
    CheckpointWriter,
    checkpoint_due,
    load_checkpoint,
    save_checkpoint,
    training_state,
)
from rftbench.execution.workers import WorkerSpec


def trained_state() -> tuple[dict, torch.nn.Module, torch.optim.Optimizer]:
    """A real training state after two steps: model (with a BatchNorm's buffers), AdamW's moments and
    step counts, the scheduler, the scaler and every RNG."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):
        loss = model(torch.randn(16, 4)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    config = RunConfig(backbone="cifar_resnet20", dataset="synthetic", setting="fix", eps="8/255")
    history = [{"epoch": 0, "val_acc": 0.5, "val_adv_acc": None}]
    return training_state(config, history, model, optimizer, scheduler, scaler), model, optimizer


def assert_same(a, b, where="state") -> None:
    """Equal values of equal types all the way down; tensors bit for bit, with their dtypes."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_background_write_loads_as_the_synchronous_one(tmp_path):
    state = trained_state()[0]
    save_checkpoint(tmp_path / "sync.pt", state)
    with CheckpointWriter() as writer:
        writer.submit(tmp_path / "background.pt", state)
    assert writer.writes == 1 and writer.write_seconds > 0 and writer.blocking_seconds > 0
    background = load_checkpoint(tmp_path / "background.pt")
    assert_same(background, load_checkpoint(tmp_path / "sync.pt"))
    assert background["model"]._metadata  # the module versions load_state_dict reads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["background.pt", "sync.pt"]  # no temporary file


def test_what_is_written_is_the_state_when_submit_returned(tmp_path, monkeypatch):
    """The write is held until the state was changed in place (parameters, AdamW's moments and step
    counts, one more optimiser step): the file holds the state `submit` saw."""
    state, model, optimizer = trained_state()
    save_checkpoint(tmp_path / "before.pt", state)
    release, real_save = threading.Event(), checkpoint.save_checkpoint

    def held_save(path, payload):
        release.wait(timeout=60)
        real_save(path, payload)

    monkeypatch.setattr(checkpoint, "save_checkpoint", held_save)
    writer = CheckpointWriter()
    writer.submit(tmp_path / "last.pt", state)
    assert not (tmp_path / "last.pt").exists()  # submit returned while the write waits
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for moments in optimizer.state.values():
            for tensor in moments.values():
                tensor.add_(1.0)
        model[1].running_mean.fill_(7.0)
    model(torch.randn(16, 4)).sum().backward()
    optimizer.step()
    before = load_checkpoint(tmp_path / "before.pt")
    assert not torch.equal(state["model"]["0.weight"], before["model"]["0.weight"])  # the live state moved
    release.set()
    writer.join()
    assert_same(load_checkpoint(tmp_path / "last.pt"), before)


def test_a_failed_write_is_raised_by_join_and_by_the_with_block_as_itself(tmp_path):
    state = trained_state()[0]
    (tmp_path / "a-file").write_text("not a folder")
    bad, good = tmp_path / "a-file" / "last.pt", tmp_path / "runs" / "last.pt"
    with pytest.raises(OSError) as synchronous:
        save_checkpoint(bad, state)
    kind = type(synchronous.value)

    writer = CheckpointWriter()
    writer.submit(bad, state)
    with pytest.raises(kind):
        writer.join()
    writer.join()  # raised once: the writer goes on
    writer.submit(bad, state)
    with pytest.raises(kind):  # the next submit raises it, before writing anything else
        writer.submit(good, state)
    assert not good.exists()

    with pytest.raises(kind), CheckpointWriter() as writer:
        writer.submit(bad, state)
    with pytest.raises(KeyError) as body, CheckpointWriter() as writer:  # the body's error is not masked
        writer.submit(bad, state)
        raise KeyError("the epoch failed")
    assert any(kind.__name__ in note for note in body.value.__notes__)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_checkpoint_due_by_epochs_and_minutes():
    assert [e for e in range(10) if checkpoint_due(e, 10, 0.0)] == list(range(10))
    assert [e for e in range(10) if checkpoint_due(e, 10, 0.0, every=3)] == [2, 5, 8, 9]
    assert [e for e in range(10) if checkpoint_due(e, 10, 1e9, every=3)] == [2, 5, 8, 9]
    assert checkpoint_due(0, 1, 0.0, every=5, minutes=60)  # the last epoch always
    assert checkpoint_due(0, 10, 600.0, minutes=10) and not checkpoint_due(0, 10, 599.9, minutes=10)

    def written(epochs: int, epoch_minutes: float, **policy) -> list[int]:
        since, writes = 0.0, []
        for epoch in range(epochs):
            since += epoch_minutes * 60
            if checkpoint_due(epoch, epochs, since, **policy):
                writes.append(epoch)
                since = 0.0
        return writes

    assert written(10, 4, minutes=10) == [2, 5, 8, 9]  # at most every 10 minutes
    assert written(10, 4, every=2, minutes=10) == [3, 7, 9]  # at even epoch ends, 10 minutes apart
    assert written(4, 30, minutes=10) == [0, 1, 2, 3]  # epochs longer than the limit: every epoch


def test_runtime_options_refuse_a_bad_policy_in_one_line():
    for kwargs, message in (
        ({"checkpoint_every": 0}, "--checkpoint-every 0: write a whole number of epochs >= 1"),
        ({"checkpoint_every": 1.5}, "--checkpoint-every 1.5"),
        ({"checkpoint_minutes": 0}, "--checkpoint-minutes 0: write a number of minutes > 0"),
        ({"checkpoint_minutes": float("nan")}, "--checkpoint-minutes nan"),
    ):
        with pytest.raises(RuntimeOptionsError, match=message):
            RuntimeOptions(**kwargs)


def test_the_cli_refuses_a_bad_policy_with_one_line_and_touches_nothing(tmp_path):
    where = ["--db", str(tmp_path / "r.db"), "--runs-dir", str(tmp_path / "runs")]
    smoke = ["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS), "--device", "cpu", *where]
    cases = [
        (
            [*smoke, "--checkpoint-every", "0"],
            "Invalid value for '--checkpoint-every': Input should be greater",
        ),
        ([*smoke, "--checkpoint-minutes", "0"], "--checkpoint-minutes 0.0: write a number of minutes > 0"),
        (["resume", "--checkpoint-every", "-1", *where], "Invalid value for '--checkpoint-every'"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        output = result.output.strip()
        assert result.exit_code == 2 and output.startswith("error: ") and "\n" not in output, (args, output)
        assert message in output, (args, output)
    assert not list(tmp_path.iterdir())  # no database, no run folder


POLICY = ["--checkpoint-every", "3", "--checkpoint-minutes", "7.5"]


def grid(tmp_path, *flags: str) -> list[str]:
    where = ["--db", str(tmp_path / "r.db"), "--runs-dir", str(tmp_path / "runs")]
    return ["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS), "--device", "cpu", *where,
            *POLICY, *flags]  # fmt: skip


def test_the_policy_reaches_the_inline_runner(tmp_path, monkeypatch):
    from rftbench.execution.runner import Runner, Summary

    seen = []
    monkeypatch.setattr(Runner, "run", lambda self, run_ids=None: seen.append(self.runtime) or Summary())
    result = CliRunner().invoke(app, grid(tmp_path))
    assert result.exit_code == 0, result.output
    assert [(r.checkpoint_every, r.checkpoint_minutes) for r in seen] == [(3, 7.5)]


def test_the_policy_reaches_local_worker_processes(tmp_path, monkeypatch):
    """The JSON spec each local worker process is started with (rftbench.execution.executors.main) carries
    the launching command's policy."""
    from rftbench.execution import executors

    commands = []

    class Finished:
        returncode = 0

        def __init__(self, command, env=None) -> None:
            commands.append(command)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(executors.subprocess, "Popen", Finished)
    CliRunner().invoke(app, grid(tmp_path, "--executor", "local", "--processes", "2"))
    specs = [WorkerSpec.from_json(command[3]) for command in commands]
    assert [(s.runtime.checkpoint_every, s.runtime.checkpoint_minutes) for s in specs] == [(3, 7.5)] * 2


def test_the_policy_reaches_slurm_workers(tmp_path, monkeypatch):
    """The pickled array task (what submitit ships to each SLURM job) carries the command's policy."""
    from rftbench.execution.slurm import SlurmExecutor

    shipped = []

    class Job:
        job_id = "42_0"

    class FakeSubmitit:
        def map_array(self, worker, tasks):
            shipped.append(pickle.loads(pickle.dumps(worker)))
            return [Job() for _ in tasks]

    monkeypatch.setattr(SlurmExecutor, "executor", lambda self: FakeSubmitit())
    result = CliRunner().invoke(app, grid(tmp_path, "--executor", "slurm"))
    assert result.exit_code == 0 and "submitted 3 SLURM worker(s) as job 42" in result.output, result.output
    (worker,) = shipped
    assert (worker.spec.runtime.checkpoint_every, worker.spec.runtime.checkpoint_minutes) == (3, 7.5)
