"""The results database, torch-free: its tables (`schema`), connections (`connect`), upgrades (`migrations`),
per-batch evaluation logs (`batches`), reads and writes (`store`), and the job queue of claims, leases and
heartbeats (`queue`) over the same engine. The only layer that speaks SQL."""
