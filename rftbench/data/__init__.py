"""Datasets, one concern a module, lowest first: `errors`; `splits` (the seeded split rules); `readers` (one
per on-disk format); `registry` (one `DatasetSpec` line per dataset: reader, layout, default root);
`lists` (which images make a split: the paper's lists, your own file, or the rules); `checks`; `download`
and `sources` (HTTP mechanics; where each dataset comes from) under `fetch`; `loading` (decoding,
augmentation, loaders) and `build` (`build_dataset`: a dataset by name as cached decoded tensors) on top.

Add a dataset with a reader in `readers` and one line in `registry.DATASETS` (and a `sources.SOURCES` line
to make it fetchable).
"""
