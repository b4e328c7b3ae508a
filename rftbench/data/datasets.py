"""The former home of the dataset registry, readers, checks and `build_dataset`, until importers move.

    from rftbench.data.build import build_dataset         # not from rftbench.data.datasets

Each name below now lives in the module it is imported from; import it from there. Delete this module
once nothing imports it.
"""

from rftbench.data.build import build_dataset, decode_all, decode_samples, decoded_cache_path
from rftbench.data.checks import check_data, check_layout
from rftbench.data.errors import DataNotFound
from rftbench.data.lists import load_split_file, paper_samples, paper_split_dir, read_paper_splits, samples
from rftbench.data.readers import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    fashion_mnist_arrays,
    read_idx,
    synthetic_arrays,
)
from rftbench.data.registry import (
    DATASETS,
    PAPER_SPLITS,
    SPLIT_FOLDER,
    DatasetSpec,
    PaperSplits,
    data_root,
    env_var,
    get_dataset_spec,
    resolve_root,
)
from rftbench.data.splits import (
    IMAGE_SUFFIXES,
    SPLIT_SEED,
    SPLITS,
    Samples,
    apportion,
    fraction_split,
    per_class_split,
    stratified_subsample,
)

LAYOUTS = {name: spec.layout for name, spec in DATASETS.items()}  # now `DATASETS[name].layout`

__all__ = [
    "DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "IMAGE_SUFFIXES", "LAYOUTS", "PAPER_SPLITS",
    "SPLITS", "SPLIT_FOLDER", "SPLIT_SEED", "DataNotFound", "DatasetSpec", "PaperSplits", "Samples",
    "apportion", "build_dataset", "check_data", "check_layout", "data_root", "decode_all", "decode_samples",
    "decoded_cache_path", "env_var", "fashion_mnist_arrays", "fraction_split", "get_dataset_spec",
    "load_split_file", "paper_samples", "paper_split_dir", "per_class_split", "read_idx",
    "read_paper_splits", "resolve_root", "samples", "stratified_subsample", "synthetic_arrays",
]  # fmt: skip
