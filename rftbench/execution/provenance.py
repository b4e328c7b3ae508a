"""What produced a run's numbers, stored with it: versions, commit, device, math modes.

info = provenance(RuntimeOptions(device="cuda"))   # {"rftbench": "1.2.0", "git": "3f2a…", ...}
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from rftbench.core.config import RuntimeOptions
from rftbench.version import __version__


def provenance(runtime: RuntimeOptions) -> dict:
    """What produced a run's numbers, stored with it: versions, commit, device, math modes. The libraries'
    versions are read from their installed metadata: importing timm and open_clip to ask would cost every
    run of a backbone that needs neither a second."""
    from importlib.metadata import version

    device = torch.device(runtime.device)
    return {
        "rftbench": __version__,
        "git": git_sha(),
        "torch": torch.__version__,
        "timm": version("timm"),
        "open_clip": version("open_clip_torch"),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "host": platform.node(),
        # how fp32 math ran: TF32 matmuls and cuDNN's per-shape kernel choice change the last bits
        "tf32": device.type == "cuda" and runtime.tf32,
        "cudnn_benchmark": device.type == "cuda",
        "compile": runtime.compile_mode or "default" if runtime.compile else None,
    }


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
