"""Sweep throughput: ``attnlens sweep`` (local executor, 2 worker processes, 1 torch thread each) against a plain
loop of ``attnlens record`` calls on the same grid, and the Ray executor's overhead per cell.

The grid: methods × prompts × seeds of one model. Arms, interleaved in each repeat, every one a fresh root and a
fresh process (model loading included, as a user would run them):

* ``loop``: one ``attnlens record PROMPTS... --method M --seed S...`` call per method (each call loads the model
  once and records its prompts × seeds one after another);
* ``local``: ``attnlens sweep SPEC --out ROOT --workers 2 --threads 1``;
* ``ray``: the same sweep with ``--executor ray --address`` on a local Ray cluster started once here
  (``ray start --head --num-cpus 2``), so the cluster's start is not counted; its overhead per cell is
  (ray − local) / cells.

Reports medians over the repeats and the ratios of the medians.

    python benchmarks/sweep_throughput.py [--repeats 3] [--steps 4] [--model attnlens-tiny] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a red crown and a golden strawberry", "a blue cat and a green dog", "a yellow ball and a pink box"]
METHODS = ["none", "syngen"]
SEEDS = [0, 1]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false")


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "attnlens", *args], env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def spec_text(model: str, steps: int) -> str:
    methods = "".join(f'\n[[methods]]\nname = "{m}"\n' for m in METHODS)
    return (f'model = "{model}"\nsteps = {steps}\nseeds = {SEEDS}\nprompts = {json.dumps(PROMPTS)}\n' + methods)


def loop(root: Path, model: str, steps: int) -> float:
    total = 0.0
    for m in METHODS:
        seeds = [a for s in SEEDS for a in ("--seed", str(s))]
        total += cli("record", *PROMPTS, "--method", m, *seeds, "--n-steps", str(steps), "--model", model,
                     "--out", str(root))
    return total


def start_ray(tmp: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    log = open(tmp / "ray.log", "wb")
    proc = subprocess.Popen([ray, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory", "100000000", "--temp-dir", str(tmp / "r")], env=env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(5)
    return proc, f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", default="attnlens-tiny")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="swb", dir="/tmp"))
    spec = tmp / "sweep.toml"
    spec.write_text(spec_text(args.model, args.steps))
    cells = len(PROMPTS) * len(METHODS) * len(SEEDS)
    ray_proc, address = (None, None) if args.no_ray else start_ray(tmp)
    times: dict[str, list[float]] = {"loop": [], "local": [], "ray": []}
    try:
        for r in range(args.repeats):
            arms = ["loop", "local"] + ([] if args.no_ray else ["ray"])
            for arm in arms if r % 2 == 0 else arms[::-1]:  # interleaved, order alternating
                root = tmp / f"{arm}-{r}"
                if arm == "loop":
                    t = loop(root, args.model, args.steps)
                elif arm == "local":
                    t = cli("sweep", str(spec), "--out", str(root), "--workers", "2", "--threads", "1")
                else:
                    t = cli("sweep", str(spec), "--out", str(root), "--executor", "ray", "--address", address)
                times[arm].append(t)
                print(f"repeat {r} {arm:<5} {t:7.1f} s  ({cells / t:.2f} cells/s)", flush=True)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if ray_proc is not None:
            ray_proc.send_signal(signal.SIGTERM)
            try:
                ray_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ray_proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"\n{cells} cells ({len(METHODS)} methods × {len(PROMPTS)} prompts × {len(SEEDS)} seeds), {args.model}, "
          f"{args.steps} steps, {args.repeats} repeats; medians:")
    for k, v in med.items():
        print(f"  {k:<5} {v:7.1f} s   {cells / v:.2f} cells/s   {v / cells:.2f} s/cell")
    print(f"  local / loop = {med['local'] / med['loop']:.2f}  (speed-up {med['loop'] / med['local']:.2f}×)")
    if "ray" in med:
        print(f"  ray overhead per cell = (ray − local) / cells = {(med['ray'] - med['local']) / cells:+.2f} s")
    print(json.dumps({"cells": cells, "medians_s": med, "runs": times}))


if __name__ == "__main__":
    main()
