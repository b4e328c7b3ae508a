"""One GPU job of at most 8 minutes: the paper's six backbones at 224 px, bf16, random init, measured in
priority order, one JSON line per case as it finishes, and the paper grid's projected hours at the end.

    PYTHONPATH=. python3 benchmarks/gpu_matrix.py --out gpu_matrix.jsonl            # --budget-s 420
    .venv/bin/python benchmarks/gpu_matrix.py --device cpu --tiny --out /tmp/m.jsonl   # a CPU check

Cases, each kind over every backbone before the next kind, most needed first:
1. `train`: eager training through the trainer's `train_one_epoch`: clean and APGD-7 img/s, their FLOPs
   ratio, TFLOP/s, MFU against the device's dense peak, peak memory. Half of every hour projection.
2. `eval`: the final evaluation's img/s, fp32 APGD-10 at 4/255 alone through `evaluate_budgets`
   (protocol `budget`), the same under the bf16 protocol, and clean forward img/s. The other half.
3. `checkpoint`: seconds to write the model and AdamW state to local disk (`save_checkpoint`: torch.save,
   fsync'd, renamed) against a host snapshot alone (`host_snapshot`: what the background writer blocks
   training for).
4. `compiled`: `train` through `CompiledModel` (mode default), with compile seconds and graph count. SWIN
   and R50 first (many small kernels, the most to gain), then CNX, ViT, ClipViT, ClipCNX (the CLIP twins
   share ViT's and CNX's architectures). Cold compiles take minutes: these come last.

Before a case starts its duration is estimated: from the slowest ratio of a finished case of the same
kind scaled by the backbones' sizes (GMACs per image, never below half: small backbones run further from
peak), else a conservative default per kind. A case that would end past `--budget-s` is not started: a
line {"skipped": ..., "reason": "time"}. One that overruns its estimate is stopped at the budget's end
(SIGALRM): {"aborted": ..., "reason": "time"}. A failing case (out of memory, say) writes its error and
the others go on; so does a backbone whose library is missing (ClipCNX needs open_clip; ClipViT is timm's).

Imports: torch, timm, numpy, pillow, torchvision, filelock, and pydantic (rftbench's run config); not
typer, rich, SQLAlchemy or open_clip (ClipCNX only).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))

PAPER = ["ViT", "SWIN", "CNX", "R50", "ClipViT", "ClipCNX"]
COMPILE_ORDER = ["SWIN", "R50", "CNX", "ViT", "ClipViT", "ClipCNX"]
TINY = ["cifar_resnet20", "test_vit"]  # test_vit: timm's tiny ViT, built here (not in the registry)
KINDS = ("train", "eval", "checkpoint", "compiled")
GMACS = {"ViT": 17.6, "SWIN": 15.5, "CNX": 15.4, "R50": 4.1, "ClipViT": 17.6, "ClipCNX": 15.4}  # 224 px
# the first case of a kind: CUDA start-up in the first; a cold compile of a base model's training step and
# attack takes two to three minutes, and a compiled case that overruns is stopped at the budget's end
DEFAULT_S = {"train": 60.0, "eval": 45.0, "checkpoint": 30.0, "compiled": 180.0}
TINY_DEFAULT_S = {"train": 8.0, "eval": 6.0, "checkpoint": 3.0, "compiled": 120.0}  # CPU, tiny models
SAFETY = 1.25  # an estimate's margin
RESERVE_S = 5.0  # kept for the closing grid line


class TimeUp(BaseException):  # not an Exception: no library's `except Exception` swallows it
    pass


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting cases past this (seconds)")
    p.add_argument("--out", type=Path, default=Path("gpu_matrix.jsonl"), help="JSONL file, appended to")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny models, 16 px, one batch of 4 (a CPU check)")
    p.add_argument("--backbone", action="append", help="repeatable [default: the six paper backbones]")
    p.add_argument("--kinds", default=",".join(KINDS), help="which kinds, comma-separated")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--batches", type=int, help="timed batches per measurement")
    p.add_argument("--resolution", type=int)
    p.add_argument("--precision", help="training precision [default: bf16; fp32 with --tiny]")
    p.add_argument("--grid", help="project this grid's hours [default: paper; smoke with --tiny]")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()), help="checkpoint folder")
    a = p.parse_args(argv)
    tiny = a.tiny
    a.backbone = a.backbone or (TINY if tiny else PAPER)
    a.batch_size = a.batch_size or (4 if tiny else 64)
    a.batches = a.batches or (1 if tiny else 8)
    a.resolution = a.resolution or (16 if tiny else 224)
    a.precision = a.precision or ("fp32" if tiny else "bf16")
    a.grid = a.grid or ("smoke" if tiny else "paper")
    a.kinds = [k for k in a.kinds.split(",") if k]
    a.defaults = TINY_DEFAULT_S if tiny else DEFAULT_S
    return a


class Matrix:
    """The clock, the estimates and the output lines of one job."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.start = args, time.monotonic()
        self.done: dict[str, list[tuple[str, float]]] = {}  # kind -> (backbone, seconds) of finished cases
        self.rows: dict[tuple[str, str], dict] = {}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        self.file = args.out.open("a")

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def emit(self, line: dict) -> None:
        text = json.dumps(line | {"elapsed_s": round(time.monotonic() - self.start, 2)})
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()

    def estimate(self, kind: str, backbone: str) -> float:
        size = GMACS.get(backbone, 1.0)
        scaled = [s * max(size / GMACS.get(b, 1.0), 0.5) for b, s in self.done.get(kind, [])]
        return SAFETY * max(scaled) if scaled else self.args.defaults[kind]

    def run(self, kind: str, backbone: str, measure) -> None:
        case = {"kind": kind, "backbone": backbone}
        estimate = self.estimate(kind, backbone)
        if estimate > self.left() - RESERVE_S:
            return self.emit({"skipped": case, "reason": "time", "estimate_s": round(estimate, 1),
                              "left_s": round(self.left(), 1)})  # fmt: skip
        started = time.monotonic()
        previous = signal.signal(signal.SIGALRM, _time_up)
        signal.alarm(max(1, int(self.left())))  # the budget's end: stop a case that overruns its estimate
        try:
            row = measure()
        except Exception as exc:  # one case's failure (out of memory, a missing kernel) ends only that case
            if self.left() > 1:
                message = (str(exc).splitlines() or [""])[0][:300]
                return self.emit(case | {"error": f"{type(exc).__name__}: {message}"})
            return self.emit({"aborted": case, "reason": "time", "estimate_s": round(estimate, 1)})  # wrapped
        except TimeUp:
            return self.emit({"aborted": case, "reason": "time", "estimate_s": round(estimate, 1)})
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            release()
        seconds = time.monotonic() - started
        self.done.setdefault(kind, []).append((backbone, seconds))
        self.rows[(kind, backbone)] = row
        self.emit(case | row | {"seconds": round(seconds, 2), "estimate_s": round(estimate, 1)})


def _time_up(signum, frame) -> None:
    raise TimeUp


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(name: str, case):
    """The registry's backbone (engine.bench builds it), or one of timm's test models by name."""
    from rftbench.models.registry import BACKBONES

    if name in BACKBONES:
        return None
    import timm

    size = {"img_size": case.resolution} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=case.num_classes, **size)


def bench_case(args, backbone: str, compile_mode: str = "off"):
    from rftbench.engine.bench import BenchCase

    return BenchCase(backbone, args.resolution, args.batch_size, args.precision, compile_mode,
                     attack_steps=7, eval_steps=10, eps="4/255", batches=args.batches)  # fmt: skip


def train_row(args, backbone: str, compile_mode: str = "off") -> dict:
    from rftbench.engine.bench import compile_row, flop_row, rig, training

    case = bench_case(args, backbone, compile_mode)
    r = rig(case, args.device, model=build(backbone, case))
    train = training(r)
    return asdict(case) | train | flop_row(r, train) | compile_row(r)


def eval_row(args, backbone: str) -> dict:
    from rftbench.core.metrics import EvalProtocol
    from rftbench.engine.bench import eval_targets, eval_throughput, evaluation, rig

    case = bench_case(args, backbone)
    r = rig(case, args.device, model=build(backbone, case))
    targets = eval_targets(r)
    row = evaluation(r, ["budget"], targets)  # fp32 (the protocol's precision), APGD-10 at 4/255 alone
    bf16 = EvalProtocol("budget", steps=case.eval_steps, precision="bf16")  # the stored bf16 protocol
    row["eval_bf16_img_s"] = eval_throughput(r.net, targets, case.eps, bf16, r.dev)
    return asdict(case) | row | {"eval_attack_img_s": row["eval_budget_img_s"], "eval_precision": "fp32"}


def checkpoint_row(args, backbone: str) -> dict:
    import torch

    from rftbench.engine import checkpoint
    from rftbench.engine.bench import rig, timed

    case = bench_case(args, backbone)
    r = rig(case, args.device, model=build(backbone, case))
    for p in r.model.parameters():  # one AdamW step: its moments exist, as in any checkpoint after step 1
        p.grad = torch.zeros_like(p)
    r.optimizer.step()
    state = {"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict()}
    path = args.scratch / f"gpu_matrix_{backbone}.pt"
    snapshot = getattr(checkpoint, "host_snapshot", None) or (lambda s: _to_host(s))
    try:
        checkpoint.save_checkpoint(path, state)  # warm-up: the file, the page cache
        save = timed(lambda: checkpoint.save_checkpoint(path, state), r.dev)
        first_snapshot = timed(lambda: snapshot(state), r.dev)  # pinned buffers allocated
        snapshot_s = timed(lambda: snapshot(state), r.dev)  # and cached by torch's host allocator
        size = path.stat().st_size
    finally:
        path.unlink(missing_ok=True)
    return {"save_s": save, "host_snapshot_s": snapshot_s, "first_host_snapshot_s": first_snapshot,
            "checkpoint_gib": size / 2**30, "scratch": str(args.scratch)}  # fmt: skip


def _to_host(state):
    import torch

    return torch.utils._pytree.tree_map(lambda t: t.to("cpu") if isinstance(t, torch.Tensor) else t, state)


def grid_line(args, rows: dict) -> dict:
    """The grid's projected hours from `train` (or `compiled`) and `eval` rows of each backbone."""
    from rftbench.engine.bench import grid_hours
    from rftbench.experiments.files import BUNDLED
    from rftbench.experiments.grids import load_experiments

    configs = [job.config for job in load_experiments(BUNDLED).jobs(args.grid)]
    line = {"grid": args.grid, "runs": len(configs), "precision": args.precision}
    for train_kind in ("train", "compiled"):
        merged = {b: rows[(train_kind, b)] | rows[("eval", b)] for b in args.backbone
                  if (train_kind, b) in rows and ("eval", b) in rows}  # fmt: skip
        projected = grid_hours(configs, merged)
        line[train_kind] = {"hours": projected["hours"], "total": projected["total"],
                            "projected_runs": sum(projected["runs"].values()),
                            "unprojected": projected["unprojected"]}  # fmt: skip
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    matrix = Matrix(args)
    import torch

    from rftbench.models.registry import BACKBONES

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    settings = ("budget_s", "resolution", "batch_size", "batches", "precision", "kinds")
    start = {"device": device, "torch": torch.__version__} | {k: getattr(args, k) for k in settings}
    matrix.emit({"start": start})
    backbones = []
    for name in args.backbone:
        spec = BACKBONES.get(name)
        library = spec.source if spec is not None and spec.source != "rftbench" else "timm"
        if importlib.util.find_spec(library) is None:
            matrix.emit({"missing": library, "backbone": name, "reason": f"{library} is not installed"})
        else:
            backbones.append(name)
    measures = {"train": train_row, "eval": eval_row, "checkpoint": checkpoint_row,
                "compiled": lambda a, b: train_row(a, b, "default")}  # fmt: skip
    for kind in [k for k in KINDS if k in args.kinds]:
        order = [b for b in COMPILE_ORDER if b in backbones] if kind == "compiled" else []
        for backbone in order + [b for b in backbones if b not in order]:
            matrix.run(kind, backbone, lambda: measures[kind](args, backbone))  # noqa: B023
    try:
        matrix.emit(grid_line(args, matrix.rows))
    except Exception as exc:  # the measured lines stand without it
        matrix.emit({"grid": args.grid, "error": f"{type(exc).__name__}: {exc}"})
    matrix.file.close()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    os._exit(status)  # a compile stopped at the budget's end leaves workers behind: no waiting for them
