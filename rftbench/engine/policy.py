"""Which weights a run keeps besides the last epoch's (`RunConfig.weights_policy`), and their state.

    kept = KeptWeights(config, model)        # "last": keeps nothing
    ... kept.step() after every optimiser step (ema), kept.epoch(metrics) after every validation (best)
    kept.module()                            # the kept weights as a model, for the final evaluation

- `last` (the default, the paper's: "overfitting of the adversarial accuracy is negligible") keeps nothing.
- `best` keeps the epoch with the highest validation `best_metric`: `clean` (val_acc), `adv` (val_adv_acc,
  APGD at ε_g on the stratified adversarial-validation subset) or `eadv` (E.adv on that subset under the
  monotone protocol, `val_eadv`). A tie keeps the earlier epoch. Its weights are copied to host memory
  when it improves (one copy per improving epoch, outside the step loop).
- `ema` keeps timm's `ModelEmaV3` of every parameter and buffer at `ema_decay` per optimiser step, a
  constant decay from the first step (no warm-up), in the model's dtype; its update is foreach lerps on
  the device, no host synchronisation.

The kept state travels in every checkpoint (`state`, `load`), so a resumed run keeps what an uninterrupted
one keeps, bit for bit. Nothing here changes what the run trains: the last weights are those of `last`.
"""

from __future__ import annotations

import copy

from torch import nn

from rftbench.core.config import RunConfig

METRIC_COLUMNS = {"clean": "val_acc", "adv": "val_adv_acc", "eadv": "val_eadv"}


class KeptWeights:
    def __init__(self, config: RunConfig, model: nn.Module) -> None:
        self.policy, self.model = config.weights_policy, model
        self.column = METRIC_COLUMNS[config.best_metric] if self.policy == "best" else None
        self.best: dict | None = None  # {"epoch", "value", "model": host state_dict}
        self.ema = None
        if self.policy == "ema":
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=config.ema_decay)

    @property
    def needs_eadv(self) -> bool:
        """Whether validation must measure E.adv (`val_eadv`) every epoch."""
        return self.column == "val_eadv"

    def step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def epoch(self, metrics: dict) -> None:
        """After an epoch's validation: keep its weights if its metric beats the best so far."""
        if self.column is None or metrics.get(self.column) is None:
            return
        value = metrics[self.column]
        if self.best is None or value > self.best["value"]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = {"epoch": metrics["epoch"], "value": value, "model": state}

    def state(self) -> dict:
        """What a checkpoint carries ({} for last)."""
        if self.ema is not None:
            return {"ema": self.ema.module.state_dict()}
        return {"best": self.best} if self.best is not None else {}

    def load(self, state: dict) -> None:
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        self.best = state.get("best", self.best)

    def module(self) -> nn.Module | None:
        """The kept weights as an eval-mode model on the live model's device (None: `last`, or a `best`
        run whose metric was never measured)."""
        if self.ema is not None:
            return self.ema.module.eval()
        if self.best is None:
            return None
        kept = copy.deepcopy(self.model)
        kept.load_state_dict(self.best["model"])
        return kept.eval()

    def details(self) -> dict:
        """What the kept weights' evaluation rows record besides their numbers."""
        if self.best is not None:
            return {"epoch": self.best["epoch"], "metric": self.column, "value": self.best["value"]}
        return {"decay": self.ema.decay} if self.ema is not None else {}
