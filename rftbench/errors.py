"""The one error type the command line knows: every user-facing error derives from `RftbenchError`.

    raise GridError("experiments.toml: grids.demo.seeds: ...; write a list of integers")

The CLI prints such an error as one line and exits 2; anything else is a bug and keeps its traceback
(Click's `ClickException`, pip's `PipError`). A subclass may also derive from the built-in type its callers
catch (`ValueError`, `FileNotFoundError`, ...), so code written against those keeps working.
"""


class RftbenchError(Exception):
    """A problem in the user's input or environment, stated in one line that names the fix."""
