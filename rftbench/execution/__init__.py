"""The application layer under the CLI: `grid` (run-grid, run, resume), `evaluate`, `status`, `bench` and
`fetch` do what the commands ask; `launch` builds the one runner and picks the executor by name from
`executors.EXECUTORS` (inline, local, `slurm`), each returning a `workers.Outcome`; `runner` claims a job
and trains, evaluates and stores it. Nothing here imports typer or draws the terminal UI.

    from rftbench.execution.grid import GridRequest, plan_grid, run_grid
"""
