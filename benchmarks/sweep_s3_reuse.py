"""The reuse check of a sweep on object storage: reading every cell's run manifest in one batch of concurrent
requests (``attnlens.sweeps.manifest.done_cells``, what ``plan`` and ``sweep status`` do on a URL root) against one
cell at a time (``cell_done`` per cell: an existence check and a read each), and the cost of one write of
``sweep.json`` (one PUT of the whole object, made by the driver after every finished cell).

The store is moto's S3 server on 127.0.0.1, started here (a thread of this process, so its latency is far below
a real S3 endpoint's tens of milliseconds per request: the batch gains more there). No model is loaded: the
manifests are written directly, complete and with each cell's settings, so both arms must find every cell done.
Arms interleaved in each repeat; medians and their ratio.

    python benchmarks/sweep_s3_reuse.py [--prompts 50] [--seeds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnlens.store.remote import write_json_object  # noqa: E402
from attnlens.sweeps import SweepManifest, parse_spec  # noqa: E402
from attnlens.sweeps.manifest import cell_done, done_cells  # noqa: E402


def start_moto() -> object:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", NO_PROXY="127.0.0.1")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    server = start_moto()
    try:
        root = "s3://bench/sweep"
        spec = parse_spec({"model": "attnlens-tiny", "steps": 2, "images_per_prompt": args.seeds,
                           "prompts": [f"a red crown number {i}" for i in range(args.prompts)],
                           "methods": [{"name": "none"}]})
        cells = spec.cells(root)
        for c in cells:
            write_json_object(f"{c.path}/manifest.json", {
                "status": "complete", "prompt": c.prompt, "seed": c.seed, "steps": spec.steps,
                "method": {"name": c.variant.method}, "sweep_cell": spec.cell_settings(c)})
        man = SweepManifest.create(root, spec, None)
        arms = {"batched": lambda: done_cells(spec, cells),
                "per-cell": lambda: {c.id for c in cells if cell_done(spec, c)},
                "sweep.json write": man.write}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(args.repeats):
            for name, fn in arms.items():
                t0 = time.perf_counter()
                found = fn()
                times[name].append(time.perf_counter() - t0)
                if name != "sweep.json write":
                    assert found == {c.id for c in cells}, f"{name} missed cells"
        kb = len(json.dumps(man.data, indent=2, sort_keys=True, default=str)) / 1024
        print(f"{len(cells)} cells on moto S3 (127.0.0.1); {args.repeats} repeats, arms interleaved")
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:>17}: " + ", ".join(f"{t:.3f}" for t in v) + f" s   median {med[k]:.3f} s"
                  + (f" ({kb:.0f} KiB)" if k == "sweep.json write" else f", {1000 * med[k] / len(cells):.2f} ms/cell"))
        print(f"batched / per-cell = {med['batched'] / med['per-cell']:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
