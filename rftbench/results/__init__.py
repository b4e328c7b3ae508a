"""The results database, torch-free: its tables, connections and migrations (`store`), and the job queue of
claims, leases and heartbeats (`queue`) over the same engine. The only layer that speaks SQL."""
