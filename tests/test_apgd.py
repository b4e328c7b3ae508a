"""APGD: structure, invariants, and parity with torchattacks' APGD on a real pretrained model."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torchattacks
from conftest import accuracy
from torch import nn

from rftbench import apgd, step_size_checkpoints

BUDGETS = (0.25 / 255, 0.5 / 255, 1 / 255)
L2_BUDGETS = (0.02, 0.05)  # the ResNet-20 keeps about 50% and 30% of the 500 images


def test_checkpoints_follow_the_paper_fractions():
    # auto-attack's integer checkpoints for 100 iterations: 22, 22+19, +16, +13, +10, +7, +6, +6.
    assert step_size_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert step_size_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert step_size_checkpoints(7) == [2, 3, 4, 5, 6]
    assert step_size_checkpoints(1) == []


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5)
    )


@pytest.mark.parametrize("returned", ["best_loss", "misclassified"])
@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm, eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_output_stays_in_the_ball_and_the_image_range(returned, random_start, norm, eps):
    model = tiny_model().eval()
    x = torch.rand(16, 3, 8, 8)
    x[:4] = 0.0  # corners of the pixel range: the ball must be clipped to [0, 1]
    x[4:8] = 1.0
    y = torch.randint(0, 5, (16,))
    x_adv = apgd(model, x, y, eps, steps=7, returned=returned, random_start=random_start, norm=norm)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    if norm == "Linf":
        assert (x_adv - x).abs().max() <= eps + 1e-6
    else:
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x), "the attack never moved"


@pytest.mark.parametrize("random_start", [False, True])
def test_the_attack_finds_the_analytic_worst_case_of_a_linear_model(random_start):
    """For two classes and logits W·x + b, cross-entropy grows with the margin (w_other − w_y)·x, so the
    worst point of the ℓ∞ ball ∩ [0, 1]^d is the vertex x + ε·sign(w_other − w_y), clipped to the box. An
    ascent in any other direction, a wrong projection or a lost best iterate misses it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.rand(32, 3, 4, 4)
    x[:4] = 0.0  # corners of the box: the vertex is clipped there
    y = torch.randint(0, 2, (32,))
    eps = 8 / 255
    w = model[1].weight.detach()
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    worst = (x + eps * direction).clamp(0, 1)
    x_adv = apgd(model, x, y, eps, steps=5, random_start=random_start)
    assert torch.allclose(x_adv, worst, atol=1e-7)
    loss = lambda z: nn.functional.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    with torch.no_grad():  # and no random point of the ball does better
        others = [((x + eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)) for _ in range(200)]
        assert all((loss(z) <= loss(x_adv) + 1e-6).all() for z in others)


def test_parameter_grads_are_untouched():
    model = tiny_model()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 3.0)  # an accumulated grad must survive as it is
    apgd(model, torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,)), 4 / 255, steps=7)
    assert torch.equal(params[0].grad, torch.full_like(params[0], 3.0))
    assert all(p.grad is None for p in params[1:])


@pytest.mark.parametrize("mode, expected", [("eval", False), ("train", True)])
def test_attack_mode_is_applied_then_every_module_restored(mode, expected):
    model = tiny_model().train()
    model[1].eval()  # a frozen BatchNorm inside a training model: a mixed state to restore exactly
    seen = []
    model[1].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    apgd(model, torch.rand(4, 3, 8, 8), torch.randint(0, 5, (4,)), 4 / 255, steps=3, mode=mode)
    assert seen and set(seen) == {expected}
    assert model.training and model[0].training and not model[1].training


def test_the_l2_attack_finds_the_analytic_worst_case_of_a_linear_model():
    """Two classes, logits W·x + b, images in the middle of the box so that the ℓ2 ball stays inside it:
    the worst point is x + ε·u, u the unit vector of w_other − w_y. A sign step (ℓ∞'s) or a projection
    that is not a rescaling misses it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = 0.25 + 0.5 * torch.rand(32, 3, 4, 4)
    y = torch.randint(0, 2, (32,))
    eps = 0.2  # below the 0.25 margin to the box's faces: no clipping
    w = model[1].weight.detach()
    u = (w[1 - y] - w[y]).view(-1, 3, 4, 4)
    worst = x + eps * u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x_adv = apgd(model, x, y, eps, steps=10, norm="L2")
    assert torch.allclose(x_adv, worst, atol=1e-3)


def test_an_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='L1' unknown"):
        apgd(tiny_model(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), 0.1, norm="L1")


def test_zero_budget_returns_the_input_without_a_forward_pass():
    model = tiny_model()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    x = torch.rand(4, 3, 8, 8)
    assert apgd(model, x, torch.zeros(4, dtype=torch.long), 0.0, steps=10) is x
    assert calls == []


def test_bf16_autocast_keeps_the_contract():
    model = tiny_model().eval()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    x_adv = apgd(model, x, y, 4 / 255, steps=5, autocast_dtype=torch.bfloat16)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6


# ---- parity with torchattacks on the real ResNet-20 (about 55/30/5% robust at 0.25/0.5/1 /255) ----


def robust_accuracy(model, attack, x, y) -> float:
    """Accuracy under `attack(x, y)`, attacking only the clean-correct samples (the others stay wrong)."""
    correct = (model(x).argmax(1) == y).detach()
    return accuracy(model, attack(x[correct], y[correct]), y[correct]) * correct.sum().item() / len(y)


@pytest.fixture(scope="module")
def reference(resnet20, cifar_test_500):
    x, y = cifar_test_500

    @functools.cache
    def torchattacks_accuracy(steps: int, eps: float, norm: str = "Linf") -> float:
        attack = torchattacks.APGD(resnet20, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=0, loss="ce")
        return robust_accuracy(resnet20, attack, x, y)

    return torchattacks_accuracy


@pytest.mark.slow
@pytest.mark.parametrize(
    "steps, eps, random_start",
    # budgets the model partly survives (about 55% and 30% robust): at 1/255 every attack saturates near 5%
    [(steps, eps, False) for steps in (7, 10) for eps in BUDGETS[:2]]
    + [(7, 0.5 / 255, True), (10, 0.5 / 255, True)],
)
def test_parity_with_torchattacks(resnet20, cifar_test_500, reference, steps, eps, random_start):
    x, y = cifar_test_500
    torch.manual_seed(0)
    ours = robust_accuracy(
        resnet20,
        lambda x, y: apgd(resnet20, x, y, eps, steps, returned="misclassified", random_start=random_start),
        x,
        y,
    )
    theirs = reference(steps, eps)
    print(
        f"APGD-{steps} eps={eps * 255:g}/255 start={random_start}: ours {ours:.3f} torchattacks {theirs:.3f}"
    )
    assert ours <= theirs + 0.01


@pytest.mark.slow
def test_the_parity_check_rejects_weaker_attacks(resnet20, cifar_test_500, reference):
    """The parity bound has teeth: FGSM, and a 7-step PGD whose fixed step cannot cross the ball, fail it."""
    x, y = cifar_test_500
    for eps in BUDGETS[1:]:
        fgsm = robust_accuracy(resnet20, torchattacks.FGSM(resnet20, eps=eps), x, y)
        pgd = torchattacks.PGD(resnet20, eps=eps, alpha=eps / 10, steps=7, random_start=False)
        short_pgd = robust_accuracy(resnet20, pgd, x, y)
        theirs = reference(7, eps)
        print(f"eps={eps * 255:g}/255: FGSM {fgsm:.3f}, PGD(step eps/10) {short_pgd:.3f}, APGD {theirs:.3f}")
        assert fgsm > theirs + 0.01
        assert short_pgd > theirs + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("eps", L2_BUDGETS[1:])
def test_l2_parity_with_torchattacks(resnet20, cifar_test_500, reference, eps):
    """ℓ2 APGD-10 from the clean image against torchattacks' `APGD(norm='L2')` (its random start) at budgets
    the model partly survives, and a weaker ℓ2 attack (one normalised-gradient step, FGM) that must fail
    the same bound."""
    x, y = cifar_test_500
    ours = robust_accuracy(
        resnet20, lambda x, y: apgd(resnet20, x, y, eps, 10, returned="misclassified", norm="L2"), x, y
    )
    theirs = reference(10, eps, "L2")

    def fgm(x, y):
        x = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(nn.functional.cross_entropy(resnet20(x), y, reduction="sum"), x)[0]
        return (x + eps * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1).detach()

    weak = robust_accuracy(resnet20, fgm, x, y)
    print(f"L2 APGD-10 eps={eps}: ours {ours:.3f} torchattacks {theirs:.3f} FGM {weak:.3f}")
    assert 0.15 < theirs < 0.7, "the budget must leave the model partly robust, or parity proves little"
    assert ours <= theirs + 0.01
    assert weak > theirs + 0.01


# ---- trajectory parity with torchattacks at N = 100, where the step-size checkpoints are auto-attack's ----


class Recorder(nn.Module):
    """The model, with every call's per-sample loss recorded: the attack's trajectory, seen from outside."""

    def __init__(self, model: nn.Module, y: torch.Tensor, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.y, self.autocast, self.losses = model, y, autocast, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (an `enabled=False` autocast here would switch off the caller's: enter one only when asked)
        with torch.autocast("cpu", dtype=self.autocast) if self.autocast else contextlib.nullcontext():
            logits = self.model(x)
        self.losses.append(nn.functional.cross_entropy(logits.detach().float(), self.y, reduction="none"))
        return logits.float() if self.autocast is not None else logits


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("eps", [0.25 / 255, 0.5 / 255])
def test_trajectory_parity_with_torchattacks_at_100_steps(resnet20, cifar_test_500, eps, precision):
    """Both APGDs from one random start (torchattacks' own draw), 100 steps, on the real ResNet-20 at budgets
    it survives in part. Every forward pass of both is recorded: the per-sample loss after every step must
    be identical. One documented difference is allowed: the paper's Algorithm 1 counts the first step as a
    loss increase only if it raised the loss (ours); auto-attack's code (and torchattacks') compares it with
    a zero-initialised buffer, so always counts it. A sample whose first step lowered its loss may therefore
    take another branch at the first checkpoint (step 22), and only then."""
    n = 96 if precision == "fp32" else 48
    x, y = cifar_test_500[0][:: 500 // n][:n], cifar_test_500[1][:: 500 // n][:n]
    amp = torch.bfloat16 if precision == "bf16" else None
    theirs = Recorder(resnet20, y, amp)
    attack = torchattacks.APGD(theirs, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce")
    torch.manual_seed(0)
    their_best, _, their_loss, _ = attack.attack_single_run(x, y)
    torch.manual_seed(0)  # their start, drawn as they draw it
    t = 2 * torch.rand(x.shape) - 1
    start = (
        x + eps * torch.ones([len(x), 1, 1, 1]) * t / t.flatten(1).abs().max(1)[0].view(-1, 1, 1, 1)
    ).clamp(0, 1)
    ours = Recorder(resnet20, y)
    our_best = apgd(ours, x, y, eps, 100, x_init=start, returned="best_loss", autocast_dtype=amp)
    a, b = torch.stack(ours.losses), torch.stack(theirs.losses)  # (1 + 100 forward passes) × samples
    assert a.shape == b.shape == (101, n)
    robust = (resnet20(our_best).argmax(1) == y).float().mean().item()
    assert 0.15 < robust < 0.9, "the budget must leave the model partly robust, or parity proves little"
    first_step_raised = a[1] > a[0]
    same = (a == b).all(0)
    print(f"eps {eps * 255:g}/255 {precision}: {int(same.sum())}/{n} identical trajectories, "
          f"{int((~first_step_raised).sum())} first steps lowered the loss, robust {robust:.3f}")  # fmt: skip
    assert torch.equal(a[:23], b[:23])  # everyone, up to and including the first checkpoint
    assert same[first_step_raised].all()  # and to the end, wherever the two counts agree
    assert same.float().mean() >= 0.9
    assert torch.equal(our_best[same], their_best[same])
    assert torch.equal(ours.losses[0], theirs.losses[0])  # the same start


@pytest.mark.slow
def test_l2_trajectory_parity_with_torchattacks(resnet20, cifar_test_500):
    """The ℓ2 trajectory from torchattacks' own start, 100 steps. Unlike ℓ∞'s sign steps, ℓ2 steps carry
    rounding forward: our projection of that start rescales it by ‖δ‖/(‖δ‖ + 1e-12), and torchattacks'
    second projection puts 1e-12 inside its min where auto-attack's does not, so the two part by rounding
    (1e-5 after four steps) that the ReLU network amplifies to 1e-3 within a few dozen. The first steps must
    agree to 1e-4, the end result to one sample in 48."""
    n, eps = 48, L2_BUDGETS[0]
    x, y = cifar_test_500[0][:: 500 // n][:n], cifar_test_500[1][:: 500 // n][:n]
    theirs = Recorder(resnet20, y)
    attack = torchattacks.APGD(theirs, norm="L2", eps=eps, steps=100, n_restarts=1, loss="ce")
    torch.manual_seed(0)
    their_best, _, _, _ = attack.attack_single_run(x, y)
    torch.manual_seed(0)  # their start, drawn as they draw it
    t = torch.randn(x.shape)
    start = (x + eps * t / ((t**2).sum(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)).clamp(0, 1)
    ours = Recorder(resnet20, y)
    our_best = apgd(ours, x, y, eps, 100, x_init=start, returned="best_loss", norm="L2")
    a, b = torch.stack(ours.losses), torch.stack(theirs.losses)
    assert a.shape == b.shape == (101, n)
    with torch.no_grad():
        robust = (resnet20(our_best).argmax(1) == y).sum().item()
        their_robust = (resnet20(their_best).argmax(1) == y).sum().item()
    print(f"L2 eps {eps}: first 5 losses within {(a[:5] - b[:5]).abs().max():.1e}, "
          f"robust {robust}/{n} (torchattacks {their_robust}/{n})")  # fmt: skip
    assert 0.1 * n < their_robust < 0.9 * n, "the budget must leave the model partly robust"
    assert torch.allclose(a[:5], b[:5], rtol=1e-4, atol=1e-5)
    assert abs(robust - their_robust) <= 1
    assert (our_best - x).flatten(1).norm(dim=1).max() <= eps + 1e-6
