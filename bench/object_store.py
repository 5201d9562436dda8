"""Object-store clients side by side: boto3 vs obstore, put and get of checkpoint-sized objects.

Starts moto's standalone S3 server on loopback (as the tests do), creates a bucket, and times
put (a local file -> one object) and get (the object -> a local file) of a 1 MB and a 20 MB
object with each library, alternating, printing the medians and the ratio. Loopback moto
measures the clients' own overhead (CPU, copies, request handling), not a network: against a
real store both are bound by the link.

    python bench/object_store.py                 # 1 MB and 20 MB, 7 repeats
    python bench/object_store.py --repeats 15 --sizes 1 20 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.helpers import create_bucket, start_moto_server, stop_process

BUCKET = "bench-artifacts"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def boto3_client(url: str):
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **CREDS)

    def put(key: str, path: Path) -> None:
        client.upload_file(str(path), BUCKET, key)

    def get(key: str, path: Path) -> None:
        client.download_file(BUCKET, key, str(path))

    return put, get


def obstore_client(url: str):
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=url,
        region="us-east-1",
        client_options={"allow_http": True},
        **CREDS,
    )

    def put(key: str, path: Path) -> None:
        obstore.put(store, key, path)

    def get(key: str, path: Path) -> None:
        with path.open("wb") as f:
            for chunk in obstore.get(store, key).stream():
                f.write(chunk)

    return put, get


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 20], help="MB")
    args = p.parse_args()
    url, proc = start_moto_server()
    try:
        create_bucket(url, BUCKET)
        clients = {"boto3": boto3_client(url), "obstore": obstore_client(url)}
        with tempfile.TemporaryDirectory() as tmp:
            print(f"moto server {url}; medians of {args.repeats} (alternating clients)")
            print(
                f"{'size':>6} {'op':>4} {'boto3 ms':>10} {'obstore ms':>11} {'boto3/obstore':>14}"
            )
            for mb in args.sizes:
                src = Path(tmp) / f"src-{mb}"
                src.write_bytes(os.urandom(mb * 1024 * 1024))
                times = {(c, op): [] for c in clients for op in ("put", "get")}
                for r in range(args.repeats + 1):
                    for name, (put, get) in clients.items():
                        key = f"{name}/{mb}/{r}"
                        dst = Path(tmp) / f"dst-{name}"
                        t0 = time.perf_counter()
                        put(key, src)
                        t1 = time.perf_counter()
                        get(key, dst)
                        t2 = time.perf_counter()
                        assert dst.read_bytes() == src.read_bytes()
                        if r:  # the first round warms connections up
                            times[name, "put"].append((t1 - t0) * 1000)
                            times[name, "get"].append((t2 - t1) * 1000)
                for op in ("put", "get"):
                    b = statistics.median(times["boto3", op])
                    o = statistics.median(times["obstore", op])
                    print(f"{mb:>4}MB {op:>4} {b:>10.1f} {o:>11.1f} {b / o:>13.2f}x")
    finally:
        stop_process(proc)


if __name__ == "__main__":
    main()
