"""Less work, the same numbers: APGD's early exit and shared start, the final evaluation and the per-epoch
validation against the plain way of computing them (each ε attacked from scratch, every returned point
predicted again), on the real pretrained ResNet-20 and CIFAR-10; the work counted in forward and
input-gradient passes per image; and the compiled attack, which must not compute weight gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rftbench.attacks.apgd import apgd, apgd_attack, loss_and_gradient, module_modes, random_point
from rftbench.core.config import budget_text, parse_budget
from rftbench.engine.batches import bits
from rftbench.engine.compiled import CompiledModel
from rftbench.engine.evaluation import robustness_curve
from rftbench.engine.trainer import validate


class Count(torch.autograd.Function):
    """Identity at the model's input that counts the images going forward and the input gradients."""

    @staticmethod
    def forward(ctx, x, work):
        ctx.work = work
        work["forward"] += x.shape[0]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.work["backward"] += grad.shape[0]
        return grad, None


class Counted(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.work = model, {"forward": 0, "backward": 0}

    def forward(self, x):
        return self.model(Count.apply(x, self.work))

    def passes(self) -> int:
        """Forward passes plus input-gradient passes of one image each (an F each), then reset."""
        total = self.work["forward"] + self.work["backward"]
        self.work.update(forward=0, backward=0)
        return total


class Log:
    """A `BatchLog` that keeps each batch's payload, to compare per-sample flags."""

    key = "test"

    def __init__(self) -> None:
        self.payloads: dict[int, dict] = {}

    def done(self) -> dict:
        return {}

    def save(self, index: int, payload: dict) -> None:
        self.payloads[index] = payload


@pytest.fixture(scope="module")
def batches(cifar_test_500):
    x, y = cifar_test_500
    return [(x[i : i + 100], y[i : i + 100]) for i in range(0, 200, 100)]


@torch.no_grad()
def plain_flags(model, x, y, grid, steps, protocol, random_start, seed, batch_index, norm="Linf") -> dict:
    """The evaluation's flags as release 0.3 computed them: predict, attack each ε from scratch, predict
    the returned points."""
    predict = lambda inputs: model(inputs).argmax(1)  # noqa: E731
    if random_start:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
        unit = random_point(torch.zeros(x.shape), 1.0, norm, gen)
    clean = robust = predict(x) == y
    flags = [clean]
    for e in grid[1:]:
        idx = (robust if protocol == "monotone" else clean).nonzero().squeeze(1)
        robust = torch.zeros_like(clean)
        if idx.numel():
            x_init = x[idx] + unit[idx] * float(e) if random_start else None
            x_adv = apgd(model, x[idx], y[idx], float(e), steps, x_init=x_init, returned="misclassified",
                         norm=norm, freeze_parameters=False)  # fmt: skip
            robust = robust.index_copy(0, idx, predict(x_adv) == y[idx])
        flags.append(robust)
    return {budget_text(e, norm): bits(f) for e, f in zip(grid, flags)}


@pytest.mark.parametrize("norm, eps", [("Linf", 0.25 / 255), ("Linf", 0.5 / 255), ("L2", 0.05)])
def test_early_exit_and_a_shared_start_return_the_plain_attack_s_points(resnet20, batches, norm, eps):
    x, y = batches[0]
    plain = apgd_attack(resnet20, x, y, eps, 10, returned="misclassified", norm=norm)
    lean = apgd_attack(resnet20, x, y, eps, 10, returned="misclassified", norm=norm, early_exit=True,
                       start=loss_and_gradient(resnet20, x, y))  # fmt: skip
    assert 0 < plain.fooled.sum() < len(y)  # some fooled early, some robust: both paths exercised
    assert torch.equal(lean.x, plain.x) and torch.equal(lean.fooled, plain.fooled)
    assert torch.equal(lean.loss, plain.loss)
    with torch.no_grad():  # the flags and losses are those of the returned points
        logits = resnet20(plain.x)
    assert torch.equal(plain.fooled, logits.argmax(1) != y)
    torch.testing.assert_close(plain.loss, F.cross_entropy(logits, y, reduction="none"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol, random_start", [("paper", False), ("monotone", False), ("paper", True)])
def test_the_lean_evaluation_gives_the_plain_flags_for_under_60_percent_of_its_work(
    resnet20, batches, protocol, random_start
):
    """Every per-sample flag at every ε of the grid equals the plain evaluation's, bit for bit on this CPU;
    the forward and input-gradient passes drop by more than 40% (paper protocol, no random start: the final
    evaluation's defaults; the monotone protocol attacked only survivors already, and random starts share no
    first pass). The grid spans this non-robust model's range: most images survive 0.25/255,
    almost none 2/255."""
    counted, log = Counted(resnet20), Log()
    grid = sorted({parse_budget(e) for e in ["0", "0.25/255", "0.5/255", "1/255", "2/255"]})
    curve = robustness_curve(counted, batches, grid, 10, protocol=protocol, random_start=random_start,
                             seed=3, log=log)  # fmt: skip
    lean_work = counted.passes()
    with module_modes(counted, training=False):
        plain = [plain_flags(counted, x, y, grid, 10, protocol, random_start, 3, i) for i, (x, y) in
                 enumerate(batches)]  # fmt: skip
    plain_work = counted.passes()
    assert [log.payloads[i]["flags"] for i in range(len(batches))] == plain
    assert 0.02 < curve.accuracies[1] and curve.accuracies[-1] < curve.accuracies[1]
    print(f"{protocol} random_start={random_start}: {lean_work} F vs {plain_work} F")
    assert lean_work < (0.6 if protocol == "paper" and not random_start else 0.9) * plain_work


def plain_validate(net, batches, eps, steps):
    """Release 0.3's adversarial validation: attack every image, predict the returned points again."""
    loss, correct = 0.0, 0
    for x, y in batches:
        x_adv = apgd(net, x, y, eps, steps, returned="misclassified", freeze_parameters=False)
        with torch.no_grad():
            logits = net(x_adv)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = sum(len(y) for _, y in batches)
    return loss / n, correct / n


def test_lean_validation_keeps_its_numbers_for_under_60_percent_of_its_work(resnet20, batches):
    counted = Counted(resnet20)
    val = validate(counted, batches[:1], batches, 1 / 255, 10, torch.device("cpu"), None,
                   torch.contiguous_format)  # fmt: skip
    lean_work = counted.passes() - 100  # less the clean pass over the first batch
    counted.eval()
    loss, acc = plain_validate(counted, batches, 1 / 255, 10)
    plain_work = counted.passes()
    assert val["val_adv_acc"] == acc and 0 < acc < val["val_acc"]
    assert val["val_adv_loss"] == pytest.approx(loss, rel=1e-6)
    print(f"validation: {lean_work} F vs {plain_work} F")
    assert lean_work < 0.6 * plain_work


def backward_graphs(captured: list):
    """A torch.compile backend (aot_eager) that keeps every backward graph it compiles."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(gm, example_inputs):
        captured.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=keep)


def matmuls(graph) -> int:
    return sum(
        node.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) for node in graph.graph.nodes
    )


@pytest.mark.parametrize("frozen, expected", [(True, 2), (False, 4)])
def test_a_compiled_attack_computes_no_weight_gradients(frozen, expected):
    """Two linear layers: the input gradient needs 2 matmuls in the backward; weight gradients add 2 more.
    An attack with trainable parameters (frozen=False, release 0.3's default) compiles them in."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    captured: list = []
    net = CompiledModel(model, backend=backward_graphs(captured))
    x, y = torch.rand(6, 3, 2, 2), torch.randint(0, 5, (6,))
    compiled = apgd_attack(net, x, y, 0.1, 3, freeze_parameters=frozen)
    assert [matmuls(g) for g in captured] == [expected]
    eager = apgd_attack(model, x, y, 0.1, 3)
    torch.testing.assert_close(compiled.x, eager.x)
    assert all(p.requires_grad for p in model.parameters())


def test_each_run_compiles_its_own_backbone_past_the_recompile_limit():
    """A process that compiled one backbone into Dynamo's recompile limit (8 graphs of the shared
    `Sequential` frame) still compiles the next: plain torch.compile falls back to eager there."""

    def convnet(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4)
        )

    def fill(net):  # 8 input sizes: 8 graphs, the limit
        for size in range(4, 12):
            net(torch.rand(2, 3, size, size))

    torch._dynamo.reset()
    fill(torch.compile(convnet(4), backend="aot_eager", dynamic=False))
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.compile(convnet(6), backend="aot_eager", dynamic=False)(torch.rand(2, 3, 12, 12))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before  # the trap: B ran eagerly

    first = CompiledModel(convnet(4), backend="aot_eager")
    fill(first)
    second = CompiledModel(convnet(6), backend="aot_eager")
    second(torch.rand(2, 3, 12, 12))
    assert first.stats()["graphs"] >= 1 and second.stats()["graphs"] >= 1
