"""Work per phase of the paper grid (120 runs), counted on the real code with a stand-in, in H100-hours.

    git worktree add /tmp/gw-before 7f16544                                    # "before", outside the repo
    .venv/bin/python benchmarks/grid_work.py --before /tmp/gw-before --after .  # side by side, ~4 min
    .venv/bin/python benchmarks/grid_work.py --root /tmp/gw-before [--quick]   # one tree, as JSON

Each tree runs in its own interpreter with rftbench imported from it (the file is printed). Work is counted,
not timed, in F = one forward pass of one image; a backward through the model is 1 F (input gradient), 1 F
more if it also computes weight gradients (a training step: 3 F; an eager APGD-7 training step:
7 × 2 F + 1 F + 3 F = 18 F). A wrapper counts the rows of every forward of the model, of every backward
through its logits (an identity autograd.Function), and as weight-gradient rows those of a backward in which
the first parameter's gradient hook fires (APGD's `autograd.grad` does not fire it, frozen or not).
`train_one_epoch`, `validate` and `evaluate_budgets`, patched in the trainer's namespace around `train(config,
model, ..., run_dir=...)`, name the phase. (FlopCounterMode breaks `autograd.grad` on a leaf input: APGD's.)

Stand-in: the real pretrained CIFAR-10 ResNet-20 of ../shared (its own head), fine-tuned by `train()` on
CIFAR-10 JPEGs at 32 px (320 train, 200 validation of which 100 adversarial, 400 test; batch 64, fp32, AdamW
3e-3): sched 4/255, T1 = T2 = 1 of 5 epochs (ε = 0, then 4/255), scored at 4/255; fix 8/255, 4 epochs, scored
at 8/255. Assumptions:
- The stand-in's fooled/robust profile (printed: its accuracy at each ε) stands for the paper models': its F
  per training image at ε > 0 and at ε = 0, per validation and per test image at ε_g are the paper runs'.
- Per paper run (each tree's `paper` grid, its data registry's image counts): training = Σ over epochs of
  train images × F per image at ε(t); validation = epochs × (validation images × 1 F, the clean pass, +
  min(val_adv_samples, validation images) × the subset's measured F beyond it); evaluation = scored test
  images × F per test image. "eval, nothing fooled" uses the F per test image of a model that ignores its
  input, on images all of its class (every image clean-correct and surviving): an early exit's worst case.
- Checkpoints: bytes per parameter of each `last.pt` / `final.pt` the stand-in wrote (os.replace into the run
  folder) × each backbone's parameters (timm / open_clip on the meta device), writes per epoch as measured; a
  write on the training thread costs bytes / 2 GB/s (fsync'd NVMe), one from another thread only its host
  snapshot, bytes / 20 GB/s (pinned device-to-host).
- H100-hours: release 0.1's H100 clean img/s (README, "Before release 0.2") at 3 F per image, at the run's
  precision (bf16) for training and validation, its eval_precision (fp32, no TF32) for evaluation. Data
  loading, host syncs and compiled graphs (a GPU job's measure) are not counted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"
BACKBONES = ("ViT", "SWIN", "CNX", "R50", "ClipViT", "ClipCNX")
CLEAN_IMG_S = {  # release 0.1 (commit afbc50d), H100, 224 px, batch 64, eager; README "Before release 0.2"
    "bf16": dict(ViT=2109, SWIN=727, CNX=1093, R50=2024, ClipViT=2096, ClipCNX=1061),
    "fp32": dict(ViT=379, SWIN=338, CNX=249, R50=1690, ClipViT=378, ClipCNX=246),
}
WRITE_BYTES_S, SNAPSHOT_BYTES_S = 2e9, 20e9
PHASES = {"train_one_epoch": "train", "validate": "val", "evaluate_budgets": "eval"}
TALLY = {"phase": "other", "pending": 0}  # phase -> F so far, and the rows of the backward under way


def add(rows: int) -> None:
    TALLY[TALLY["phase"]] = TALLY.get(TALLY["phase"], 0) + rows


class Logits(torch.autograd.Function):
    """The identity on a model's logits: its backward is one backward through the model."""

    @staticmethod
    def forward(ctx, logits: Tensor) -> Tensor:
        return logits.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        TALLY["pending"] = len(grad)
        add(len(grad))
        return grad


class Counted(nn.Module):
    """`model` whose forwards, backwards and weight-gradient backwards add their rows to TALLY's phase."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # fires only in a backward that computes weight gradients (the first parameter's is computed last)
        next(model.parameters()).register_hook(lambda grad: add(TALLY["pending"]))

    def forward(self, x: Tensor) -> Tensor:
        add(len(x))
        logits = self.model(x)
        return Logits.apply(logits) if logits.requires_grad else logits


class Constant(nn.Module):
    """Logits that ignore the image (no input gradient): an image of class 0 survives every attack."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(1.0, 0.0, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.bias + 0 * x.flatten(1)[:, :1]


def phased(name: str, fn, calls: list):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        TALLY["phase"], start = name, TALLY.get(name, 0)
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append((name, TALLY.get(name, 0) - start))
            TALLY["phase"] = "other"

    return run


def stand_in(model: nn.Module, data: list, budget: str, quick: bool, **fields) -> dict:
    """One `train()` of `model` on `data` ((x, y) of train, val, test), counted: F per call of each phase,
    the checkpoint writes (name, bytes, on the main thread), ε per epoch and the evaluation's curve."""
    from rftbench import RunConfig
    from rftbench.data.loading import ImageTensorDataset, make_loader
    from rftbench.engine import trainer

    config = RunConfig(backbone="cifar_resnet20", dataset="cifar10-jpeg", eps=budget, batch_size=64, lr=3e-3,
                       warmup_epochs=0, resolution=32, augmentation="device",
                       val_adv_samples=10 if quick else 100, **fields)  # fmt: skip
    loaders = [make_loader(ImageTensorDataset(*xy, None), 64, shuffle=i == 0) for i, xy in enumerate(data)]
    calls, writes, replace, originals = [], [], os.replace, {name: getattr(trainer, name) for name in PHASES}
    for name, phase in PHASES.items():
        setattr(trainer, name, phased(phase, originals[name], calls))
    with tempfile.TemporaryDirectory() as run_dir:

        def counted_replace(src, dst, *args, **kwargs):
            if Path(dst).parent == Path(run_dir):
                main = threading.current_thread() is threading.main_thread()
                writes.append((Path(dst).name, os.path.getsize(src), main))
            return replace(src, dst, *args, **kwargs)

        os.replace = counted_replace
        try:
            result = trainer.train(config, Counted(model), *loaders, run_dir=run_dir)
        finally:
            os.replace = replace
            for name, fn in originals.items():
                setattr(trainer, name, fn)
    (row,) = result["budgets"]
    return {"calls": calls, "writes": writes, "params": sum(p.numel() for p in model.parameters()),
            "eps": config.schedule.values(config.epochs, seed=config.seed), "budget": config.eps,
            "sizes": [len(y) for _, y in data], "val_adv": min(config.val_adv_samples, len(data[1][1])),
            "profile": (row["eps"], row["accuracies"])}  # fmt: skip


def per_image(runs: list[dict], worst: list[dict]) -> dict:
    """F per image of each phase from the stand-ins (module docstring), by ε_g where it depends on it."""
    train: dict[bool, list[float]] = {True: [], False: []}
    out: dict = {"val_adv": {}, "eval": {}, "worst": {}, "profile": {}}
    for run in runs:
        (train_n, val_n, test_n), budget = run["sizes"], run["budget"]
        for eps, f in zip(run["eps"], [f for phase, f in run["calls"] if phase == "train"]):
            train[eps > 0].append(f / train_n)
        vals = [(f - val_n) / run["val_adv"] for phase, f in run["calls"] if phase == "val"]
        out["val_adv"][budget] = sum(vals) / len(vals)
        out["eval"][budget] = sum(f for phase, f in run["calls"] if phase == "eval") / test_n
        out["profile"][budget] = run["profile"]
    for run in worst:
        out["worst"][run["budget"]] = sum(f for p, f in run["calls"] if p == "eval") / run["sizes"][2]
    out["train_adv"], out["train_clean"] = (sum(v) / len(v) for v in (train[True], train[False]))
    epochs = sum(len(run["eps"]) for run in runs)
    for file, count in (("last.pt", epochs), ("final.pt", len(runs))):
        writes = [(b / r["params"], main) for r in runs for name, b, main in r["writes"] if name == file]
        out[file] = {"bytes_per_param": sum(s for s, _ in writes) / max(len(writes), 1),
                     "writes": len(writes) / count,  # per epoch (last.pt), per run (final.pt)
                     "training_thread": all(main for _, main in writes)}  # fmt: skip
    return out


def project(root: Path, f: dict) -> dict:
    """Per backbone and phase, [F (checkpoints: bytes), H100-hours] of the tree's paper grid."""
    from rftbench.data.registry import DATASETS
    from rftbench.experiments.grids import load_experiments
    from rftbench.models.build import build_backbone

    jobs = load_experiments(root / "rftbench" / "experiments.toml").jobs("paper")
    with torch.device("meta"):  # random init, no memory: parameter counts with each dataset's head
        params = {f"{b}/{n}": sum(p.numel() for p in build_backbone(b, n, pretrained=False).parameters())
                  for b in BACKBONES for n in {DATASETS[j.config.dataset].classes for j in jobs}}  # fmt: skip
    rows = {b: {p: [0.0, 0.0] for p in ("train", "val", "eval", "worst", "ckpt")} for b in BACKBONES}
    for job in jobs:
        c, spec = job.config, DATASETS[job.config.dataset]
        sizes = (spec.train_images, spec.val_images, spec.test_images)
        subsets = (c.train_subset, c.val_subset, c.test_subset)
        train_n, val_n, test_n = (min(n, s or n) for n, s in zip(sizes, subsets))
        n_params = params[f"{c.backbone}/{spec.classes}"]
        adversarial = sum(e > 0 for e in c.schedule.values(c.epochs, seed=c.seed))  # epochs at ε(t) > 0
        train = train_n * (adversarial * f["train_adv"] + (c.epochs - adversarial) * f["train_clean"])
        val = c.epochs * (val_n + min(c.val_adv_samples, val_n) * f["val_adv"][c.eps])
        work = {"train": (train, c.precision), "val": (val, c.precision),
                "eval": (test_n * f["eval"][c.eps], job.eval_precision),
                "worst": (test_n * f["worst"][c.eps], job.eval_precision)}  # fmt: skip
        for phase, (amount, precision) in work.items():
            rows[c.backbone][phase][0] += amount
            rows[c.backbone][phase][1] += amount / (3 * CLEAN_IMG_S[precision][c.backbone]) / 3600
        for file, writes in (("last.pt", c.epochs), ("final.pt", 1)):
            size = writes * f[file]["writes"] * f[file]["bytes_per_param"] * n_params
            speed = WRITE_BYTES_S if f[file]["training_thread"] else SNAPSHOT_BYTES_S
            rows[c.backbone]["ckpt"][0] += size
            rows[c.backbone]["ckpt"][1] += size / speed / 3600
    return {"runs": len(jobs), "rows": rows, "params": params}


def measure(root: Path, quick: bool) -> dict:
    """What `show` prints of one tree, rftbench imported from `root`."""
    sys.path.insert(0, str(root))
    import rftbench
    from rftbench.data.loading import decode_image_folder
    from rftbench.models.nets import cifar_resnet20, load_cifar_resnet20_weights, with_normalization
    from rftbench.models.registry import IMNET

    if not Path(rftbench.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"rftbench imported from {rftbench.__file__}, not from {root}")
    train = decode_image_folder(SHARED / "data/cifar10-jpeg/train", 32, per_class=4 if quick else 32)[:2]
    held_x, held_y, _ = decode_image_folder(SHARED / "data/cifar10-jpeg/test", 32, 6 if quick else 60)
    test = (torch.cat([held_x[1::3], held_x[2::3]]), torch.cat([held_y[1::3], held_y[2::3]]))
    data = [train, (held_x[0::3], held_y[0::3]), test]
    n = 16 if quick else 64  # images of class 0 for the model that ignores them
    zeros = [(held_x[:n], torch.zeros(n, dtype=torch.int64))] * 3
    runs, worst = [], []
    for budget, fields in (("4/255", dict(setting="sched", t1=1, t2=1, epochs=5)), ("8/255", dict(epochs=4))):
        torch.manual_seed(0)
        net = cifar_resnet20()
        load_cifar_resnet20_weights(net, SHARED / "weights" / "resnet20-12fca82f.th")
        runs.append(stand_in(with_normalization(net, *IMNET), data, budget, quick, **fields))
        worst.append(stand_in(Constant(), zeros, budget, quick, epochs=1))
    f = per_image(runs, worst)
    other = TALLY.get("other", 0)  # work outside the three phases: not projected, shown as a warning
    return {"root": str(root), "file": rftbench.__file__, "per_image": f, "other": other, **project(root, f)}


def totals(tree: dict, backbone: str, phase: str) -> tuple[float, float]:
    """(F in millions, GB for checkpoints; H100-hours) of a phase ("total": all but the worst case)."""
    rows = tree["rows"].values() if backbone == "all" else [tree["rows"][backbone]]
    keys = ("train", "val", "eval", "ckpt") if phase == "total" else (phase,)
    work = sum(r[k][0] for r in rows for k in keys if (k == "ckpt") == (phase == "ckpt"))
    return work / (1e9 if phase == "ckpt" else 1e6), sum(r[k][1] for r in rows for k in keys)


def change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.1%}" if before else "n/a"


def show(before: dict, after: dict) -> None:
    for label, tree in (("before", before), ("after", after)):
        f = tree["per_image"]
        print(f"{label}: rftbench from {tree['file']} ({tree['runs']} paper runs)")
        if tree["other"]:
            print(f"  warning: the stand-ins did {tree['other']} F outside the three phases (not projected)")
        for b, (eps, accs) in f["profile"].items():
            print(f"  stand-in at {b}: accuracy " + ", ".join(f"{e} {a:.1%}" for e, a in zip(eps, accs)))
            print(f"    F per image: validation subset {f['val_adv'][b]:.2f} beyond the clean pass, test "
                  f"{f['eval'][b]:.2f} ({f['worst'][b]:.2f} if nothing is fooled)")  # fmt: skip
        print(f"  F per training image: {f['train_adv']:.2f} at ε > 0, {f['train_clean']:.2f} at ε = 0")
        for file, per in (("last.pt", "epoch"), ("final.pt", "run")):
            w, where = f[file], "on" if f[file]["training_thread"] else "off"
            print(f"  {file}: {w['bytes_per_param']:.2f} B/param, {w['writes']:.2f} per {per}, {where} the "
                  "training thread")  # fmt: skip
    print("\nF: millions of image-forwards (ckpt: GB written); h: H100-hours (compiled graphs: not counted)")
    row = "{:<21}{:<9}{:>10}{:>10}{:>9}{:>10}{:>9}{:>9}"
    print(row.format("phase", "backbone", "F before", "F after", "change", "h before", "h after", "change"))
    for phase in ("train", "val", "eval", "worst", "ckpt", "total"):
        for backbone in (*BACKBONES, "all"):
            (fb, hb), (fa, ha) = totals(before, backbone, phase), totals(after, backbone, phase)
            cells = (f"{fb:.1f}", f"{fa:.1f}", change(fb, fa), f"{hb:.2f}", f"{ha:.2f}", change(hb, ha))
            print(row.format("eval, nothing fooled" if phase == "worst" else phase, backbone, *cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="count one tree, print its JSON")
    parser.add_argument("--before", type=Path, help="with --after: both trees, side by side")
    parser.add_argument("--after", type=Path)
    parser.add_argument("--quick", action="store_true", help="a few dozen images: seconds, for tests")
    args = parser.parse_args()
    if args.root is not None:
        print(json.dumps(measure(args.root, args.quick)))
        return
    if args.before is None or args.after is None:
        parser.error("give --root, or both --before and --after")
    trees = []
    for root in (args.before, args.after):
        command = [sys.executable, str(HERE), "--root", str(root.resolve())] + ["--quick"] * args.quick
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=root)
        trees.append(json.loads(out.stdout.splitlines()[-1]))
    show(*trees)


if __name__ == "__main__":
    main()
