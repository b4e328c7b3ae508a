"""The live displays: a grid's runs while they train (`execution.runner.Progress`), and downloads
(`data.fetch.Progress`).

    with RichProgress() as progress: ...   # the runner calls start_run, epoch, end_run
"""

from __future__ import annotations

from rftbench.cli.app import console


class RichProgress:
    """Grid progress, the current run, its epoch, ε(t), last validation accuracy, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.grid = self.bar.add_task("runs", total=None)
        self.job = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start_run(self, run, config, index, total) -> None:
        self.bar.update(self.grid, total=total, completed=index, description=f"runs ({total} to do)")
        if self.job is not None:
            self.bar.remove_task(self.job)
        self.name = f"{run.id[:8]} {config.backbone}/{config.dataset} {config.label} {config.eps}"
        self.job = self.bar.add_task(f"{self.name} · building", total=config.epochs)

    def epoch(self, run, config, metrics) -> None:
        done = metrics["epoch"] + 1
        text = (
            f"{self.name} · epoch {metrics['epoch']} · ε(t) {metrics['eps'] * 255:.2f}/255 · "
            f"val {metrics['val_acc']:.1%}"
        )
        if metrics.get("val_adv_acc") is not None:
            text += f" · adv {metrics['val_adv_acc']:.1%}"
        self.bar.update(self.job, completed=done, description=text)

    def end_run(self, run, status, detail="") -> None:
        colour = {"completed": "green", "failed": "red"}.get(status, "yellow")
        self.bar.console.print(f"[{colour}]{status}[/] {self.name} {detail}", highlight=False)
        self.bar.advance(self.grid)


class RichFetchProgress:
    """A download bar per file (size, speed, time left) and a line per step (`data.fetch.Progress`)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        self.bar = Progress(*columns, console=console)
        self.task = None

    def __enter__(self) -> RichFetchProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, label: str, total: int | None, completed: int) -> None:
        self.task = self.bar.add_task(label, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        self.bar.advance(self.task, amount)

    def note(self, text: str) -> None:
        self.bar.console.print(text, highlight=False, markup=False)  # paths may hold [brackets]

    def say(self, markup: str) -> None:
        self.bar.console.print(markup, highlight=False)
