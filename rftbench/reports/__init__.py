"""Reports, torch-free: which stored results a report shows (`results`), their statistics over seeds
(`stats`), the paper's tables (`tables`, one builder per table), one rendering step to the terminal,
Markdown, CSV or LaTeX (`render`), figures (`plots`), and what the CLI's `report` and `plot` call
(`commands`)."""
