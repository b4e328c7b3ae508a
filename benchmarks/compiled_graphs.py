"""What `--compile` compiles in one run, before beside after: the graphs, and the gradients each backward
graph computes (the attack's should be its input's alone). Counted on the CPU, through aot_eager.

    git worktree add /tmp/gw-before 7f16544
    .venv/bin/python benchmarks/compiled_graphs.py --before /tmp/gw-before --after .
    .venv/bin/python benchmarks/compiled_graphs.py --root .          # one tree, as JSON

Each tree runs in its own interpreter with rftbench imported from it (its file is printed). The run: timm's
`test_vit` (a small ViT) at 32 px, fix 4/255, APGD-3 training, bf16 training and validation, the fp32 final
evaluation over the 4/255 E.adv grid, 2 epochs of 48 CIFAR-10 JPEGs, through `train(...)` with
`RuntimeOptions(compile=True)`. `torch.compile` is replaced for the run by AOTAutograd with graph-keeping
compilers that run the graphs eagerly: each forward graph is one Dynamo graph; each backward graph outputs a
gradient for every input it was traced with (its parameters and the image), None where none is needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
SHARED = HERE.parent.parent.parent / "shared"


def measure(root: Path) -> dict:
    sys.path.insert(0, str(root))
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    import rftbench

    if not Path(rftbench.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"rftbench imported from {rftbench.__file__}, not from {root}")
    import timm

    from rftbench import RunConfig, RuntimeOptions, train
    from rftbench.data.loading import ImageTensorDataset, decode_image_folder, make_loader
    from rftbench.models.nets import with_normalization

    forward, backward = [], []

    def keep(graphs: list):
        def compiler(gm, example_inputs):
            graphs.append(gm)
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=keep(forward), bw_compiler=keep(backward))
    plain = torch.compile
    torch.compile = lambda model, **_: plain(model, backend=backend)  # the run's compiler, whatever it asks
    images, labels, _ = decode_image_folder(SHARED / "data/cifar10-jpeg/train", 32, per_class=6)
    held, held_labels, _ = decode_image_folder(SHARED / "data/cifar10-jpeg/test", 32, per_class=3)
    config = RunConfig(backbone="test_vit", dataset="cifar10-jpeg", setting="fix", eps="4/255", epochs=2,
                       batch_size=24, lr=1e-3, warmup_epochs=0, resolution=32, train_attack_steps=3,
                       eval_attack_steps=3, val_adv_samples=10, precision="bf16")  # fmt: skip
    splits = ((images, labels), (held[:15], held_labels[:15]), (held[15:], held_labels[15:]))
    loaders = [make_loader(ImageTensorDataset(x, y, None), 24, shuffle=False) for x, y in splits]
    torch.manual_seed(0)
    model = with_normalization(
        timm.create_model("test_vit", num_classes=10, img_size=32), (0.5,) * 3, (0.5,) * 3
    )
    torch._dynamo.reset()
    train(config, model, *loaders, runtime=RuntimeOptions(compile=True))
    torch.compile = plain
    n_params = sum(1 for _ in model.parameters())
    gradients = []
    for gm in backward:
        (output,) = [node for node in gm.graph.nodes if node.op == "output"]
        gradients.append(sum(arg is not None for arg in output.args[0]))
    return {
        "file": rftbench.__file__,
        "graphs": len(forward),
        "backward_graphs": gradients,
        "params": n_params,
    }


def show(before: dict, after: dict) -> None:
    for name, tree in (("before", before), ("after", after)):
        print(f"{name}: rftbench from {tree['file']}")
        print(f"  graphs compiled in one run: {tree['graphs']}")
        for i, n in enumerate(tree["backward_graphs"]):
            what = "the input's alone" if n == 1 else "with weight gradients"
            print(f"  backward graph {i}: {n} gradients, {what} ({tree['params']} parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="one tree, as JSON")
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path)
    args = parser.parse_args()
    if args.root is not None:
        print(json.dumps(measure(args.root)))
        return
    if args.before is None or args.after is None:
        parser.error("give --root, or both --before and --after")
    trees = []
    for root in (args.before, args.after):
        command = [sys.executable, str(HERE), "--root", str(root.resolve())]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=root)
        trees.append(json.loads(out.stdout.splitlines()[-1]))
    show(*trees)


if __name__ == "__main__":
    main()
