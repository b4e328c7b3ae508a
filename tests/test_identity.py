"""A run's id survives releases: the ids release 0.1 gave every grid of experiments.toml, a field added with a
default, and a field renamed or removed through an explicit migration (rftbench.core.config)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from rftbench.core import config as config_module
from rftbench.core.config import IDENTITY_V1, RunConfig
from rftbench.experiments.grids import load_experiments

EXPERIMENTS = Path(__file__).resolve().parents[1] / "rftbench" / "experiments.toml"
V1_DB = Path(__file__).parent / "fixtures" / "v1_smoke" / "v1.db"
# sha256 of each grid's sorted run ids, as release 0.1 (commit dc22d17) computed them from this file's grids
RELEASE_0_1 = {
    "paper": (120, "fa38670ee5cf8775"),
    "sweep": (100, "3496c5d1c1ae9ac5"),
    "ablation": (30, "6a1097e9e89ba272"),
    "baselines": (78, "cf42af26ffda1540"),
    "smoke": (3, "df0c4047211fb4e5"),
    "demo": (3, "9f78bef47c284a82"),
}


# Release 0.2 made the GPU grids bf16 with device-side augmentation (two fields of the grids' definition,
# so new runs); the ids of this definition, pinned for the releases after it.
RELEASE_0_2 = {
    "paper": (120, "8f017f3742270857"),
    "sweep": (100, "0a8ccffba34043bb"),
    "ablation": (30, "fec940f7df9cc40a"),
    "baselines": (78, "ff6f16e6ab525ad2"),
    "smoke": (3, "df0c4047211fb4e5"),
    "demo": (3, "9f78bef47c284a82"),
}


# Grids a later release redefined on purpose (so new runs): the definitions the pins above were made from,
# per release. Release 0.3 made the demo 3 seeds of standard / fix / sched / adaptive on smaller subsets;
# release 0.4 moved it to Omniglot (a many-class task) with MobileNetV2.
REDEFINED = {
    "0.2": {
        "demo": """
[grids.demo]
description = "make demo: ImageNet EfficientNet-Lite0 on Fashion-MNIST, standard / fix / sched"
backbones = ["tf_efficientnet_lite0"]
datasets = ["fashion_mnist"]
settings = [{ setting = "standard" }, { setting = "fix" }, { setting = "sched", t1 = 2, t2 = 6 }]
eps = ["24/255"]
precision = "fp32"        # CPU grids stay fp32, augmented in the loader
augmentation = "loader"
epochs = 8
resolution = 16
train_subset = 1000
val_subset = 500
test_subset = 500
batch_size = 64
lr = 1e-3
warmup_epochs = 1
train_attack_steps = 3
eval_attack_steps = 5
val_adv_samples = 200
standard_eval_budgets = ["24/255"]
adaptation_threshold = 0.5   # 10 classes: chance is 0.1
""",
    },
    "0.3": {
        "demo": """
[grids.demo]
description = "make demo: EfficientNet-Lite0 on Fashion-MNIST, standard / fix / sched / adaptive, 3 seeds"
backbones = ["tf_efficientnet_lite0"]
datasets = ["fashion_mnist"]
settings = [
    { setting = "standard" }, { setting = "fix" }, { setting = "sched", t1 = 2, t2 = 6 },
    { setting = "adaptive" },
]
eps = ["24/255"]
seeds = [0, 1, 2]
precision = "fp32"        # CPU grids stay fp32, augmented in the loader
augmentation = "loader"
epochs = 8
resolution = 16
train_subset = 500
val_subset = 200
test_subset = 500
batch_size = 64
lr = 1e-3
warmup_epochs = 1
train_attack_steps = 3
eval_attack_steps = 5
val_adv_samples = 50
eval_protocol = "monotone"   # early exit (a union of attacks): 5× cheaper at 24/255, so 500 test images fit
standard_eval_budgets = ["24/255"]
adaptation_threshold = 0.4   # 10 classes: chance is 0.1; standard fine-tuning ends near 50%
""",
    },
}
# The ids of the grids release 0.3 added or redefined, pinned for the releases after it.
RELEASE_0_3 = {
    "demo": (12, "ba5146192d986b6d"),
    "adaptive": (144, "025424e40bfe5447"),
}
# The grids `rftbench tune` came with take lr and weight decay from a study: their run ids follow the values
# the database holds; what must survive is the study each cell finds (its key, rftbench.core.tuning).
TUNED_STUDIES = {
    "smoke_tuned": ["18242ea452df7fe3"],
    "demo_tuned": ["7d7e5dfabf8722b4"],
    "demo_modes_tuned": ["2e8712b3e197d8fa", "138bfcfbf8510962"],  # a study per fine-tuning mode (0.5)
}
# The ids of the grids release 0.4 redefined, pinned for the releases after it.
RELEASE_0_4 = {
    "demo": (9, "4188715a9251dad8"),
}
# The grids release 0.5 added (objectives and fine-tuning modes), pinned for the releases after it.
RELEASE_0_5 = {
    "objectives": (16, "01c8e6cefd6f18c6"),
    "modes": (32, "95f0b7af1ee4b751"),
    "demo_variants": (30, "c599e42a3c54f0ec"),
}


def grid_configs(grid: str, tmp_path: Path, release: str | None = None) -> list[RunConfig]:
    """The configs of `grid` in experiments.toml, or under its definition in `release` (REDEFINED; a grid
    the release did not redefine is read as this file has it)."""
    path = EXPERIMENTS
    if release is not None and grid in REDEFINED[release]:
        text = EXPERIMENTS.read_text()
        start = text.index(f"[grids.{grid}]")
        end = text.find("\n[", start + 1)
        path = tmp_path / f"experiments-{release}.toml"
        path.write_text(
            text[:start] + REDEFINED[release][grid].strip() + "\n" + (text[end:] if end > 0 else "")
        )
    return [job.config for job in load_experiments(path).jobs(grid)]


def digest(configs) -> tuple[int, str]:
    ids = sorted(config.run_id for config in configs)
    return len(ids), hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]


def test_every_grid_keeps_the_ids_release_0_1_gave_it(tmp_path):
    """Under release 0.1's definition (fp32, loader-side augmentation) every grid has 0.1's ids; under
    0.2's, 0.2's; under 0.3's, 0.3's for the grids 0.3 added or redefined; under this file's, 0.4's."""
    for grid, pinned in RELEASE_0_1.items():
        configs = grid_configs(grid, tmp_path, release="0.2")
        as_in_0_1 = [dataclasses.replace(c, precision="fp32", augmentation="loader") for c in configs]
        assert digest(as_in_0_1) == pinned, grid
        assert digest(configs) == RELEASE_0_2[grid], grid
    for grid, pinned in RELEASE_0_3.items():
        assert digest(grid_configs(grid, tmp_path, release="0.3")) == pinned, grid
    for grid, pinned in RELEASE_0_4.items():
        assert digest(grid_configs(grid, tmp_path)) == pinned, grid
    for grid, pinned in RELEASE_0_5.items():
        assert digest(grid_configs(grid, tmp_path)) == pinned, grid
    for grid, keys in TUNED_STUDIES.items():
        assert [plan.key for plan in load_experiments(EXPERIMENTS).studies(grid)] == keys, grid
    grids = set(RELEASE_0_1) | set(RELEASE_0_3) | set(TUNED_STUDIES) | set(RELEASE_0_5)
    assert set(load_experiments(EXPERIMENTS).grids) == grids
    paper_sched = RunConfig(backbone="SWIN", dataset="Cars", setting="sched", eps="4/255", t1=12, t2=37)
    assert paper_sched.run_id == "09ed814cc629ad50"


def test_stored_configs_of_release_0_1_hash_to_their_stored_ids():
    with sqlite3.connect(V1_DB) as connection:
        stored = connection.execute("select id, config from run").fetchall()
    assert len(stored) == 3
    for run_id, text in stored:
        config = RunConfig.from_json(text)
        assert config.run_id == run_id and set(json.loads(text)) == set(IDENTITY_V1)


def with_field(name: str, default, base=RunConfig):
    return dataclasses.make_dataclass("Later", [(name, type(default), dataclasses.field(default=default))],
                                      bases=(base,), frozen=True)  # fmt: skip


def test_a_field_added_with_a_default_keeps_every_id_and_changes_it_off_default():
    later = with_field("label_smoothing", 0.0)
    base = dict(backbone="SWIN", dataset="Cars", setting="sched", eps="4/255", t1=12, t2=37)
    assert later(**base).run_id == RunConfig(**base).run_id == "09ed814cc629ad50"
    assert later(**base, label_smoothing=0.1).run_id != RunConfig(**base).run_id
    # its stored JSON names it (the full record), and reads back to the same run
    text = later(**base).canonical_json()
    assert '"label_smoothing":0.0' in text and later.from_json(text).run_id == RunConfig(**base).run_id


def test_objective_and_mode_fields_keep_every_id_and_are_canonical():
    """The fields of release 0.5 at their defaults change no id; values a run does not use are reset, so
    one computation has one id; every value a run does use gives a new one."""
    base = RunConfig(backbone="SWIN", dataset="Cars", setting="sched", eps="4/255", t1=12, t2=37)
    unused = [dict(beta=3.0), dict(lp_ft_epochs=5), dict(lora_r=4, lora_alpha=2.0), dict(finetune="full")]
    assert base.run_id == "09ed814cc629ad50"
    assert all(dataclasses.replace(base, **fields).run_id == base.run_id for fields in unused)
    standard = RunConfig(backbone="SWIN", dataset="Cars", setting="standard", eps="0/255")
    as_trades = dataclasses.replace(standard, objective="trades", beta=1.0)  # TRADES at ε_g = 0: CE
    assert as_trades.run_id == standard.run_id and (as_trades.objective, as_trades.beta) == ("at", 6.0)
    used = [
        dict(objective="trades"), dict(objective="trades", beta=3.0), dict(objective="mart"),
        dict(finetune="linear"), dict(finetune="bitfit"), dict(finetune="lora"),
        dict(finetune="lora", lora_r=4), dict(finetune="lp_ft", lp_ft_epochs=12),
        dict(finetune="lp_ft", lp_ft_epochs=11),
    ]  # fmt: skip
    ids = {dataclasses.replace(base, **fields).run_id for fields in used}
    assert len(ids) == len(used) and base.run_id not in ids
    as_ints = dataclasses.replace(base, objective="trades", beta=3, finetune="lora", lora_alpha=8)
    assert (
        as_ints.run_id == dataclasses.replace(as_ints, beta=3.0, lora_alpha=8.0).run_id
    )  # 3 and 3.0: one id
    mart_standard = dataclasses.replace(standard, objective="mart")  # MART at ε = 0 is not CE: its own run
    assert mart_standard.run_id != standard.run_id
    stored = json.loads(dataclasses.replace(base, objective="trades").canonical_json())
    assert RunConfig.from_dict(stored).run_id == dataclasses.replace(base, objective="trades").run_id
    old = {k: v for k, v in json.loads(base.canonical_json()).items() if k not in ("objective", "finetune")}
    assert RunConfig.from_dict(old).run_id == base.run_id  # a config stored before these fields existed


def test_weights_policy_fields_keep_every_id_and_are_canonical():
    """The fields of release 0.6 (weights_policy, best_metric, ema_decay) at their defaults, or unused,
    change no id; every used value gives a new one; 1 and 1.0 are one; a config stored without them reads
    back to its id."""
    base = RunConfig(backbone="SWIN", dataset="Cars", setting="sched", eps="4/255", t1=12, t2=37)
    assert base.run_id == "09ed814cc629ad50"
    unused = [dict(best_metric="clean"), dict(ema_decay=0.5), dict(weights_policy="best", ema_decay=0.5),
              dict(weights_policy="ema", best_metric="eadv"), dict(weights_policy="last")]  # fmt: skip
    assert dataclasses.replace(base, **unused[0]).run_id == base.run_id
    assert dataclasses.replace(base, **unused[1]).run_id == base.run_id
    assert (
        dataclasses.replace(base, **unused[2]).run_id
        == dataclasses.replace(base, weights_policy="best").run_id
    )
    assert (
        dataclasses.replace(base, **unused[3]).run_id
        == dataclasses.replace(base, weights_policy="ema").run_id
    )
    used = [dict(weights_policy="best"), dict(weights_policy="best", best_metric="clean"),
            dict(weights_policy="best", best_metric="eadv"), dict(weights_policy="ema"),
            dict(weights_policy="ema", ema_decay=0.99)]  # fmt: skip
    ids = {dataclasses.replace(base, **fields).run_id for fields in used}
    assert len(ids) == len(used) and base.run_id not in ids
    ema = dataclasses.replace(base, weights_policy="ema", ema_decay=0.5)
    assert ema.run_id == RunConfig.from_json(ema.canonical_json()).run_id and ema.label == "sched+ema(0.5)"
    old = {
        k: v for k, v in json.loads(base.canonical_json()).items() if k not in ("weights_policy", "ema_decay")
    }
    assert RunConfig.from_dict(old).run_id == base.run_id  # a config stored before these fields existed


def test_an_unknown_stored_key_is_refused_and_a_retired_or_renamed_one_migrates(monkeypatch):
    config = RunConfig(backbone="SWIN", dataset="Cars")
    stored = json.loads(config.canonical_json())
    with pytest.raises(
        ValueError, match="unknown keys mixup: a newer rftbench wrote it, or a field was removed"
    ):
        RunConfig.from_dict({**stored, "mixup": 0.2})
    # a field that once existed and was removed: pinned to the value every stored config had
    monkeypatch.setattr(config_module, "RETIRED", {"mixup": 0.0})
    monkeypatch.setattr(config_module, "IDENTITY_V1", (*IDENTITY_V1, "mixup"))
    old_id = hashlib.sha256(json.dumps({**config.identity(), "mixup": 0.0}, sort_keys=True,
                                       separators=(",", ":")).encode()).hexdigest()[:16]  # fmt: skip
    assert RunConfig.from_dict({**stored, "mixup": 0.0}).run_id == old_id == config.run_id
    with pytest.raises(ValueError, match="sets mixup=0.0, which this rftbench no longer supports"):
        RunConfig.from_dict({**stored, "mixup": 0.3})
    # a field renamed: the stored key still reads, and the id is hashed under the old name
    monkeypatch.setattr(config_module, "RETIRED", {})
    monkeypatch.setattr(config_module, "IDENTITY_V1", IDENTITY_V1)
    expected = config.run_id
    monkeypatch.setattr(config_module, "RENAMED", {"pretrained": "from_pretrained"})
    fields = [("from_pretrained" if f.name == "pretrained" else f.name, f.type,
               dataclasses.field(default=f.default)) for f in dataclasses.fields(RunConfig)]  # fmt: skip
    methods = {k: v for k, v in vars(RunConfig).items() if not k.startswith("__") or k == "__post_init__"}
    renamed = dataclasses.make_dataclass("Renamed", fields, namespace=methods, frozen=True)
    moved = renamed.from_dict(stored)
    assert moved.from_pretrained is config.pretrained and moved.run_id == expected
