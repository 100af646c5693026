"""A local S3-compatible server for the tests (moto's server mode, as s3fs's own tests use):
on 127.0.0.1, a free port, with throwaway credentials in the environment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server that runs while the block does."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3(endpoint: str):
    """An s3fs filesystem on the endpoint (the test's own view of the bucket)."""
    import s3fs

    return s3fs.S3FileSystem(
        endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False
    )
