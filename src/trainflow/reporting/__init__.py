"""A run's report as markdown, from the summary the report task collects (metrics.json).

Prefect-free: `tasks/report.py` collects the summary, writes the files and publishes them."""
