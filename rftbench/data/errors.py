"""The data layer's user errors, below every reader so that a reader needs nothing above it.

    raise MissingFile(root / "images.txt")   # "dataset Cub: …/images.txt not found; expected <layout>"

The registry (`registry.expecting`) restates a reader's `MissingFile` with the dataset's name and layout.
"""

from __future__ import annotations

from pathlib import Path

from rftbench.errors import RftbenchError


class DataNotFound(RftbenchError, FileNotFoundError):
    """A dataset root is missing or malformed; the message names the dataset, the layout and the path."""


class MissingFile(DataNotFound):
    """A file or folder a reader needs is not there (readers know formats, not dataset names)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} not found")
        self.path = path
