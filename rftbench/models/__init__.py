"""Backbones: the registry of names (`registry`, torch-free at import: the CLI lists it), where their weights
come from (`weights`), building one (`build`), and the networks rftbench defines itself (`nets`).

Add a backbone with one `BackboneSpec` line in `registry.BACKBONES`.
"""
