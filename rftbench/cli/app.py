"""The Typer app every command registers on, and its one way of answering an error a user can fix.

rftbench --help
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from rftbench.errors import RftbenchError

console = Console(soft_wrap=True)  # log lines stay whole in files and narrow terminals


def say(markup: str) -> None:
    """Print one line of console markup (the application layer's `say`)."""
    console.print(markup, highlight=False)


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit, instead of a traceback."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def finish(outcome) -> None:
    """Print an executor's Outcome (rftbench.execution.workers) and exit with its code."""
    for line in outcome.lines:
        say(line)
    if outcome.exit_code:
        raise typer.Exit(code=outcome.exit_code)


def expected_error(exc: Exception) -> str | None:
    """The one line for an error a user can fix (bad input, a database that fails, a file that cannot be
    written), or None for a bug, which keeps its traceback."""
    if isinstance(exc, RftbenchError):
        return str(exc).strip().splitlines()[0]
    if type(exc).__module__.startswith("sqlalchemy"):
        from rftbench.results.connect import first_line

        return f"the database failed: {first_line(exc)}; nothing was changed by this command's failed step"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return None


class OneLineErrors(TyperGroup):
    """Every command answers an expected error, or an option Click rejects, with one line and exit code 2
    (`expected_error`), instead of a traceback or a usage box."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Click's usage errors (typer vendors its own Click, so matched by name, not class)
            if any(c.__name__ == "UsageError" for c in type(exc).__mro__):
                where = exc.ctx.command_path if exc.ctx else ctx.command_path
                # Typer words a Literal's refusal "Value error, 'x' is not one of ...": the rest says it
                message = exc.format_message().replace(": Value error, ", ": ")
                fail(f"{where}: {message} (see {where} --help)")
            line = expected_error(exc)
            if line is None:
                raise
            fail(line)


app = typer.Typer(
    cls=OneLineErrors,
    help="Robust fine-tuning of non-robust pretrained models, with ε-scheduling.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstrings' line breaks flow into paragraphs; [brackets] stay text
    pretty_exceptions_enable=False,  # an unexpected error is a bug report: a plain traceback serves it best
)


@app.callback()
def main() -> None:
    """rftbench: adversarial fine-tuning runs, metrics and reports."""
