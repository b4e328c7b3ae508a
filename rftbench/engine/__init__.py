"""Training and measuring one model: the trainer (`trainer`), resumable checkpoints (`checkpoint`), the final
evaluation and its protocols (`evaluation`), and the throughput bench (`bench`). Knows nothing of the
database, the experiments file or the command line."""
