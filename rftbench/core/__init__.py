"""The torch-free core: run configs and budgets (`config`), ε schedules (`schedules`), metrics and
evaluation protocols (`metrics`), and the small file helpers every layer shares (`files`).

Imports only the standard library, pydantic and itself; every other layer may import it.
"""
