"""Reports, torch-free: the paper's tables and their statistics over stored results (`tables`), rendered to
the terminal, Markdown, CSV or LaTeX, and figures (`plots`)."""
