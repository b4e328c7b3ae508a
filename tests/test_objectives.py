"""TRADES and MART: their losses against values computed by hand from the papers' formulas, the KL inner
maximisation on a real pretrained model (and beside torchattacks' TPGD, TRADES' own attack), the training
step of each objective, and one step of each against a reference that installs from the registry: TRADES
against the Adversarial Robustness Toolbox's trainer, MART against torchdefenses' copy of MART's code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from rftbench.attacks.apgd import apgd, apgd_attack
from rftbench.attacks.objectives import OBJECTIVES, kl_divergence, mart_loss, trades, trades_loss


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
LOGITS_ADV = [[0.5, 1.5, -0.5], [1.0, -1.0, 0.0]]
LABELS = [0, 2]


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q) if pk > 0)


def test_kl_divergence_is_the_textbook_sum_and_zero_terms_vanish():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    expected = hand_kl([0.5, 0.5, 0.0], softmax([0.0, 1.0, 2.0]))
    assert kl_divergence(p, logits).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(F.softmax(logits, 1), logits).item() == pytest.approx(0.0, abs=1e-6)


def test_trades_loss_equals_the_paper_formula_by_hand():
    """Zhang et al. 2019, eq. 5: CE(f(x), y) + β · KL(f(x) ‖ f(x')), averaged over the batch."""
    beta = 6.0
    ce = [-math.log(softmax(z)[y]) for z, y in zip(LOGITS, LABELS)]
    kl = [hand_kl(softmax(z), softmax(za)) for z, za in zip(LOGITS, LOGITS_ADV)]
    expected = sum(ce) / 2 + beta * sum(kl) / 2
    got = trades_loss(torch.tensor(LOGITS), torch.tensor(LOGITS_ADV), torch.tensor(LABELS), beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # one image, worked out on paper: logits (1, 0, 0) clean, (0, 1, 0) adversarial, label 0, β = 2
    e = math.e
    by_hand = math.log((e + 2) / e) + 2 * (e - 1) / (e + 2)
    one = trades_loss(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.0, 1, 0]]), torch.tensor([0]), 2.0)
    assert one.item() == pytest.approx(by_hand, rel=1e-6)


def test_trades_loss_gradient_flows_through_both_outputs():
    logits = torch.tensor(LOGITS, requires_grad=True)
    logits_adv = torch.tensor(LOGITS_ADV, requires_grad=True)
    trades_loss(logits, logits_adv, torch.tensor(LABELS), 6.0).backward()
    assert logits.grad.abs().sum() > 0 and logits_adv.grad.abs().sum() > 0


def test_mart_loss_equals_the_paper_formula_by_hand():
    """Wang et al. 2020, eq. 9 with their code's constants: BCE(p', y) = −log p'_y − log(1.0001 −
    max_{k≠y} p'_k + 1e-12), plus β · KL(p ‖ p') · (1.0000001 − p_y); without them, the paper's formula."""
    beta = 5.0

    def by_hand(eps_a: float, eps_b: float, eps_c: float) -> float:
        total_bce, total_robust = 0.0, 0.0
        for z, za, y in zip(LOGITS, LOGITS_ADV, LABELS):
            p, q = softmax(z), softmax(za)
            wrong = max(q[k] for k in range(3) if k != y)
            total_bce += -math.log(q[y]) - math.log(1 + eps_a - wrong + eps_c)
            kl = sum(pk * (math.log(pk) - math.log(qk + eps_c)) for pk, qk in zip(p, q))
            total_robust += kl * (1 + eps_b - p[y])
        return total_bce / 2 + beta * total_robust / 2

    got = mart_loss(torch.tensor(LOGITS), torch.tensor(LOGITS_ADV), torch.tensor(LABELS), beta).item()
    assert got == pytest.approx(by_hand(1e-4, 1e-7, 1e-12), rel=1e-6)
    assert got == pytest.approx(by_hand(0, 0, 0), rel=1e-3)  # the paper's formula, constants aside


def test_mart_runner_up_is_the_most_likely_wrong_class_even_when_the_label_is_not_top():
    # image 1's adversarial top class is 0 (wrong) and its label 2 is second: the runner-up must be 0
    q = softmax(LOGITS_ADV[1])
    assert max(range(3), key=q.__getitem__) == 0
    only_bce = mart_loss(torch.tensor(LOGITS[1:]), torch.tensor(LOGITS_ADV[1:]), torch.tensor([2]), 0.0)
    assert only_bce.item() == pytest.approx(-math.log(q[2]) - math.log(1.0001 - q[0] + 1e-12), rel=1e-6)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 5),
    )  # fmt: skip


def test_at_zero_budget_trades_is_cross_entropy_and_mart_reuses_one_forward():
    net = tiny_net().train()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    forwards = []
    net.register_forward_hook(lambda *args: forwards.append(1))
    loss, logits = trades(net, x, y, 0.0, 6.0, 3)
    assert len(forwards) == 1 and loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    forwards.clear()
    loss, logits = OBJECTIVES["mart"](net, x, y, 0.0, 6.0, 3)
    assert len(forwards) == 1 and loss.item() == pytest.approx(mart_loss(logits, logits, y, 6.0).item())


def test_the_objectives_train_and_restore_the_models_mode():
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    for name, objective in OBJECTIVES.items():
        net = tiny_net().train()
        loss, logits = objective(net, x, y, 8 / 255, 6.0, 3)
        loss.backward()
        assert net.training and net[1].training, name  # attacked in eval mode, returned as found
        assert torch.isfinite(loss) and logits.shape == (8, 5), name
        assert all(p.grad is not None for p in net.parameters()), name


@pytest.fixture(scope="module")
def batch(cifar_test_500):
    x, y = cifar_test_500
    return x[::5][:64], y[::5][:64]


def clean_probabilities(model, x):
    with torch.no_grad():
        return F.softmax(model(x), 1)


def test_the_kl_inner_maximisation_raises_the_kl_on_a_real_model(resnet20, batch):
    """APGD on KL(p ‖ f(x')) from TRADES' start x + 0.001·N(0, I): the KL grows far above the start's, and
    more steps do not lose ground (APGD keeps its best iterate)."""
    x, _ = batch
    p = clean_probabilities(resnet20, x)
    torch.manual_seed(0)
    start = x + 0.001 * torch.randn_like(x)
    before = kl_divergence(p, resnet20(start.clamp(0, 1)).detach()).mean().item()
    mean_kl = {}
    for steps in (3, 10):
        attack = apgd_attack(resnet20, x, p, 4 / 255, steps, x_init=start)
        assert (attack.x - x).abs().max() <= 4 / 255 + 1e-6
        mean_kl[steps] = kl_divergence(p, resnet20(attack.x).detach()).mean().item()
        assert attack.loss.mean().item() == pytest.approx(mean_kl[steps], rel=1e-4)  # its own loss is the KL
    assert mean_kl[3] > 100 * max(before, 1e-6) and mean_kl[3] > 0.5
    assert mean_kl[10] >= mean_kl[3] - 1e-6


def test_apgd_kl_is_at_least_as_strong_as_trades_own_attack(resnet20, batch):
    """torchattacks' TPGD is TRADES' inner maximisation (PGD on the same KL, step 2/255, 10 steps): APGD
    with as many steps reaches at least its mean KL, and fools as many images."""
    x, _ = batch
    p = clean_probabilities(resnet20, x)
    torch.manual_seed(0)
    x_tpgd = torchattacks.TPGD(resnet20, eps=4 / 255, alpha=2 / 255, steps=10)(x)
    torch.manual_seed(0)
    ours = apgd_attack(resnet20, x, p, 4 / 255, 10, x_init=x + 0.001 * torch.randn_like(x)).x
    with torch.no_grad():
        kl_tpgd, kl_ours = (kl_divergence(p, resnet20(z)).mean().item() for z in (x_tpgd, ours))
        flips = [(resnet20(z).argmax(1) != p.argmax(1)).sum().item() for z in (x_tpgd, ours)]
    assert kl_ours >= kl_tpgd * 0.98, (kl_ours, kl_tpgd)
    assert flips[1] >= flips[0] - 1, flips


def one_step(objective: str, model, batch, monkeypatch) -> tuple:
    """One training step of `objective` on a train-mode copy of `model` (32 images), its gradients left in
    place; the points its APGD found (to hand a reference), and a second untouched copy for the reference."""
    import copy

    import rftbench.attacks.objectives as objectives

    x, y = batch[0][:32], batch[1][:32]
    ours, theirs = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    found = []
    monkeypatch.setattr(objectives, "apgd", lambda *a, **k: found.append(apgd(*a, **k)) or found[-1])
    torch.manual_seed(0)
    loss, _ = OBJECTIVES[objective](ours, x, y, 8 / 255, 6.0, 5)
    loss.backward()
    assert len(found) == 1 and (found[0] - x).abs().max() > 1 / 255  # the attack moved the points
    return x, y, found[0], loss.item(), ours, theirs


def same_step(theirs, ours) -> None:
    """Every gradient (the references zero them before a step, not after) and BatchNorm buffer agree; a
    failure names the tensor."""
    grads = [{name: p.grad for name, p in net.named_parameters()} for net in (theirs, ours)]
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dict(theirs.named_buffers()), dict(ours.named_buffers()))


def test_a_trades_step_equals_the_adversarial_robustness_toolbox_s(resnet20, batch, monkeypatch):
    """One TRADES training step against the reference that installs from the registry: ART's
    `AdversarialTrainerTRADESPyTorch` (its `_batch_process`: attack in eval mode, then clean and adversarial
    forwards in train mode, CE + β · KLDivLoss(sum) / n). ART is handed the very points our APGD-KL found, so
    the outer step is compared on equal inputs: from the same pretrained ResNet-20 in train mode, every
    gradient and every BatchNorm statistic after the step agree."""
    import numpy as np
    from art.attacks.attack import EvasionAttack
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch
    from art.estimators.classification import PyTorchClassifier

    x, y, found, _, ours, theirs = one_step("trades", resnet20, batch, monkeypatch)

    class FoundPoints(EvasionAttack):  # ART's attack interface, answering with our points in its batch order
        attack_params: list = []
        _estimator_requirements = ()

        def generate(self, x_batch, y=None, **kwargs):
            rows = [int(np.flatnonzero((x.numpy() == row).all(axis=(1, 2, 3)))[0]) for row in x_batch]
            return found[rows].numpy()

    classifier = PyTorchClassifier(
        theirs, torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
        optimizer=torch.optim.SGD(theirs.parameters(), lr=1.0), clip_values=(0.0, 1.0), device_type="cpu",
    )  # fmt: skip
    AdversarialTrainerTRADESPyTorch(classifier, FoundPoints(estimator=classifier), beta=6.0).fit(
        x.numpy(), y.numpy(), batch_size=len(x), nb_epochs=1
    )
    same_step(theirs, ours)


def test_a_mart_step_equals_the_reference_code_s(resnet20, batch, monkeypatch):
    """One MART training step against the reference that installs from the registry: torchdefenses' `MART`
    (its `_do_iter` is MART's code: boosted CE of x', KL(p ‖ p') weighted by 1 − p_y, the 1.0001 / 1e-12 /
    1.0000001 constants), handed the very points our APGD-CE found. From the same pretrained ResNet-20 in
    train mode, the loss, every gradient and BatchNorm statistic agree."""
    from torchdefenses.trainer import MART

    x, y, found, loss, ours, theirs = one_step("mart", resnet20, batch, monkeypatch)
    reference = object.__new__(MART)  # its trainer wants its own model wrapper; the step needs only these
    reference.model, reference.device, reference.beta = theirs, torch.device("cpu"), 6.0
    reference.atk = lambda images, labels: found
    reference.optimizer = torch.optim.SGD(theirs.parameters(), lr=1.0)
    cost, _, _ = reference._do_iter((x, y))
    assert cost == pytest.approx(loss, rel=1e-5)
    same_step(theirs, ours)
