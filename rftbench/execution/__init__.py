"""Running jobs: the `runner` that claims a job and trains, evaluates and stores it, and the `executors` that
decide where it runs (this process, one process per GPU, a SLURM array)."""
