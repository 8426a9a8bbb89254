"""A local S3-compatible server for the tests: moto's server mode on 127.0.0.1 (a free port), with the AWS
variables pointing the file system's libraries at it and a bucket named ``bucket``. The server is a thread of
the test process; worker processes the test starts reach it through ``AWS_ENDPOINT_URL``."""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator


@contextlib.contextmanager
def moto_s3(monkeypatch, home) -> Iterator[object]:
    """Start the server, set the environment (``ATTNLENS_HOME=home``), create ``bucket``; yield a boto3 client."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
                 "ATTNLENS_HOME": str(home)}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec keeps file systems by arguments; the endpoint is new
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bucket")
    try:
        yield client
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


__all__ = ["moto_s3"]
