"""Datasets: the registry of names and on-disk layouts, one reader per format, splits, checks, decoding
into tensors (`loading`), and downloads with their split lists (`fetch`)."""
