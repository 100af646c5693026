"""Point Prefect at a throwaway home before it is imported, so benchmarks start cold and clean."""

import os
import tempfile


def isolate() -> str:
    """Set Prefect's home and result storage to a new temporary folder; return that folder."""
    home = tempfile.mkdtemp(prefix="trainflow-bench-")
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = f"{home}/storage"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return home
