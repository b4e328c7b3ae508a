"""Attacks, one file each (auto-attack's layout): `apgd` (APGD-CE, ℓ∞/ℓ2). AutoAttack and torchattacks are
wrapped where they are evaluated (`engine.evaluation`)."""
