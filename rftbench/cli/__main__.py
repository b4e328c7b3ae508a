"""`python -m rftbench.cli ARGS`: the console script `rftbench ARGS` without installing it.

python -m rftbench.cli --help
"""

from rftbench.cli import app

app()
