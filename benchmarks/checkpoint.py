"""Overhead of flyte-ray checkpoints over raw fsspec transfers.

For each payload size and backend (a local folder, and S3 on a moto server this script starts on
loopback and stops), times

* save:    ``Checkpoint.save(path)``    vs ``fs.put_file(path, key)``
* restore: ``Checkpoint.restore(dir)``  vs ``fs.get_file(key, path)``

of the same file, best of ``--repeat`` runs each (interleaved, after one warm-up), and prints the
ratio flyte-ray / raw. The checkpoint is saved repeatedly on one prefix with one object, so the
timings are the steady-state costs of a warm object: the commit marker on save, the listing that
finds the newest version on restore. Pruning of the oldest version runs in the background after
a save commits; the benchmark waits for it (untimed, ``Checkpoint.flush``) after each save so
that it does not spill into the next timing.

    python benchmarks/checkpoint.py [--sizes 10,200] [--repeat 3] [--backends local,s3]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from flyte_ray.checkpoint import Checkpoint  # noqa: E402


def _timed(fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
    if before is not None:
        before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _make_payload(path: pathlib.Path, size_mb: int) -> None:
    block = os.urandom(2**20)
    with open(path, "wb") as f:
        for i in range(size_mb):
            # vary each MiB so nothing along the way can dedupe or compress it away
            f.write(i.to_bytes(8, "little") + block[8:])


def bench_backend(
    name: str, root: str, options: dict[str, Any], src: pathlib.Path, repeat: int, work: pathlib.Path
) -> list[tuple[str, str, float, float]]:
    cp = Checkpoint(f"{root}/ckpt", options=options, keep=2)
    fs = cp.fs
    raw_dir = f"{fs._strip_protocol(root)}/raw"
    if name == "local":
        fs.makedirs(raw_dir, exist_ok=True)
    raw_key = f"{raw_dir}/{src.name}"
    dest_raw = work / "dest-raw"
    dest_cp = work / "dest-cp"

    def clear(d: pathlib.Path) -> Callable[[], None]:
        def f() -> None:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

        return f

    ops = {
        "save": (lambda: fs.put_file(str(src), raw_key), lambda: cp.save(src), None, None),
        "restore": (
            lambda: fs.get_file(raw_key, str(dest_raw / src.name)),
            lambda: cp.restore(dest_cp),
            clear(dest_raw),
            clear(dest_cp),
        ),
    }
    rows = []
    for op, (raw_fn, cp_fn, raw_before, cp_before) in ops.items():
        # warm-up: connections, page cache, first listing
        _timed(raw_fn, raw_before)
        _timed(cp_fn, cp_before)
        cp.flush()
        raw_t, cp_t = [], []
        for _ in range(repeat):
            raw_t.append(_timed(raw_fn, raw_before))
            cp_t.append(_timed(cp_fn, cp_before))
            # A save returns at its commit point and prunes in the background; let that finish
            # (untimed) so it neither spills into the next raw timing nor is hidden by it.
            cp.flush()
        rows.append((name, op, min(raw_t), min(cp_t)))
    restored = cp.restore(dest_cp)
    assert restored is not None and restored.stat().st_size == src.stat().st_size
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,200", help="payload sizes in MB (MiB), comma separated")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (best is kept)")
    ap.add_argument("--backends", default="local,s3", help="comma separated: local, s3")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]

    server = None
    if "s3" in backends:
        from tests._s3server import start_moto

        server = start_moto(bucket="flyte-ray-bench")
    results: list[tuple[int, str, str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="flyte-ray-bench-") as tmp:
            work = pathlib.Path(tmp)
            for size in sizes:
                src = work / f"payload-{size}mb.bin"
                _make_payload(src, size)
                for b in backends:
                    if b == "local":
                        root, options = str(work / "store" / f"{size}"), {}
                    elif b == "s3":
                        assert server is not None
                        root, options = f"{server.url}/{size}", server.options
                    else:
                        raise SystemExit(f"unknown backend {b!r}")
                    for name, op, raw, ours in bench_backend(b, root, options, src, args.repeat, work):
                        results.append((size, name, op, raw, ours))
                        print(f"  {size} MB {name:5s} {op:7s} raw {raw:8.4f}s  flyte-ray {ours:8.4f}s", flush=True)
                src.unlink()
    finally:
        if server is not None:
            server.stop()

    print()
    print(f"best of {args.repeat}; ratio = flyte-ray / raw fsspec (bar: <= 1.10)")
    print(f"{'size':>7} | {'backend':7} | {'op':7} | {'raw s':>8} | {'flyte-ray s':>11} | {'ratio':>6}")
    print(f"{'-' * 7}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 8}-+-{'-' * 11}-+-{'-' * 6}")
    for size, name, op, raw, ours in results:
        print(f"{size:>4} MB | {name:7} | {op:7} | {raw:8.4f} | {ours:11.4f} | {ours / raw:5.2f}x")


if __name__ == "__main__":
    main()
