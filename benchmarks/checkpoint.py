"""Overhead of flyte-ray checkpoints over raw fsspec transfers.

For each payload size and backend (a local folder, and S3 on a moto server this script starts on
loopback and stops), times

* save:    ``Checkpoint.save(path)``    vs ``fs.put_file(path, key)``
* restore: ``Checkpoint.restore(dir)``  vs ``fs.get_file(key, path)``

of the same file, and prints the ratio flyte-ray / raw of the best run of each (the bar: <= 1.10)
and, for information, of the median runs. Runs are interleaved (raw, flyte-ray, raw, ...) after
one warm-up; there are at least ``--repeat`` of them, and more while either side has run for less
than ``--min-time`` seconds in all (at most ``--max-runs``), so that a 10 MB transfer, which
takes milliseconds, is sampled about as long as a 200 MB one and a single disturbed run on a busy
machine cannot decide its ratio. The checkpoint is saved repeatedly on one prefix with one object, so the
timings are the steady-state costs of a warm object. What flyte-ray does on top of raw:

* local save: a version folder, the payload, then the commit marker (written last).
* S3 save: the file is one object, ``<prefix>/<version>.<name>``, which is its own commit point
  (S3 object writes are atomic), so a warm save is exactly one upload, like raw.
* restore: the listing that finds the newest complete version. On S3 it runs concurrently with
  the GET of the version the object last saved (kept only if the listing confirms it is still
  the newest). For objects up to 50 MiB that GET is flyte-ray's own single GET read up to 4 MiB
  at a time, where s3fs's get_file reads 64 KiB at a time -- cheaper per byte, which is what
  keeps the 10 MB S3 restore close to raw despite its extra LIST request (on this moto setup the
  LIST alone costs about 15% of a 10 MB GET). Larger objects use s3fs's get_file, like raw.

Pruning: after a save commits, retiring the oldest version (one DELETE on S3, an rmtree locally)
runs in a background thread that ``save`` does not wait for; the next call on the same object
waits for it first. The benchmark waits for it after each save (``Checkpoint.flush``), outside
the save timing so that it neither spills into the next raw timing nor is hidden by it, and
reports that time separately (column "prune"). Note the asymmetry this implies: raw overwrites
the same file/key every run (locally that includes truncating the old 200 MB file), while a
checkpoint save writes a new version and the old one is removed by that background pruning --
which is why the local 200 MB save can come out well below 1.0x.

Loop time blocked per save (``--blocking-sizes``, default 10,200,2000 MB): how long the caller
is blocked by ``Checkpoint.save(src)`` (foreground: the whole upload) and by
``Checkpoint.save(src, background=True)`` (a snapshot: the file copied into a local staging
folder by the kernel, or ``bytes`` kept as they are), for a file path and for in-memory bytes,
on each backend; the background upload is waited for apart, after each timing. The bar: the
background save blocks for at most 10% of the foreground time at 200 MB and above. (A file saved
to a *local* store cannot meet it: its snapshot is a copy of the file on the same disk, which is
what the foreground save does too; in-memory state can, and S3 can.)

    python benchmarks/checkpoint.py [--sizes 10,200] [--repeat 5] [--min-time 1] [--backends local,s3]
                                    [--blocking-sizes 10,200,2000] [--only-blocking]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

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


class Row(NamedTuple):
    size: int
    backend: str
    op: str
    raw: list[float]
    ours: list[float]
    prune: list[float]


def bench_backend(
    name: str,
    root: str,
    options: dict[str, Any],
    src: pathlib.Path,
    size: int,
    work: pathlib.Path,
    repeat: int,
    min_time: float,
    max_runs: int,
) -> list[Row]:
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
    rows: list[Row] = []
    for op, (raw_fn, cp_fn, raw_before, cp_before) in ops.items():
        # warm-up: connections, page cache, first listing
        _timed(raw_fn, raw_before)
        _timed(cp_fn, cp_before)
        cp.flush()
        raw_t: list[float] = []
        cp_t: list[float] = []
        prune_t: list[float] = []
        while len(raw_t) < repeat or (min(sum(raw_t), sum(cp_t)) < min_time and len(raw_t) < max_runs):
            raw_t.append(_timed(raw_fn, raw_before))
            cp_t.append(_timed(cp_fn, cp_before))
            # A save returns at its commit point and prunes in the background; let that finish
            # (timed apart) so it neither spills into the next raw timing nor is hidden by it.
            prune_t.append(_timed(cp.flush))
        rows.append(Row(size, name, op, raw_t, cp_t, prune_t))
    restored = cp.restore(dest_cp)
    assert restored is not None and restored.stat().st_size == src.stat().st_size
    return rows


class Blocked(NamedTuple):
    size: int
    backend: str
    source: str
    fg: list[float]
    bg: list[float]
    upload: list[float]


def bench_blocking(
    name: str, root: str, options: dict[str, Any], src: pathlib.Path, size: int, runs: int
) -> list[Blocked]:
    """Caller-blocked seconds of foreground vs background saves of ``src`` (a file) and of its
    bytes in memory; alternated, after one warm-up of each."""
    cp = Checkpoint(f"{root}/blocking", options=options, keep=2)
    data = src.read_bytes()
    out: list[Blocked] = []
    for source, payload in (("file", src), ("bytes", data)):
        fg: list[float] = []
        bg: list[float] = []
        up: list[float] = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            cp.save(payload)
            t = time.perf_counter() - t0
            cp.flush()
            t0 = time.perf_counter()
            h = cp.save(payload, background=True)
            b = time.perf_counter() - t0
            assert h is not None
            h.result()
            cp.flush()
            if i:  # the first round warms up
                fg.append(t)
                bg.append(b)
                up.append(h.upload_s)
        out.append(Blocked(size, name, source, fg, bg, up))
    del data
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,200", help="payload sizes in MB (MiB), comma separated")
    ap.add_argument("--repeat", type=int, default=5, help="least timed runs per measurement")
    ap.add_argument("--min-time", type=float, default=1.0, help="run on until each side took this many seconds")
    ap.add_argument("--max-runs", type=int, default=100, help="most timed runs per measurement")
    ap.add_argument("--backends", default="local,s3", help="comma separated: local, s3")
    ap.add_argument("--blocking-sizes", default="10,200,2000", help="MB, for the blocked-time comparison ('' skips it)")
    ap.add_argument("--blocking-runs", type=int, default=3, help="timed runs per blocked-time figure (2 GB: 1)")
    ap.add_argument("--only-blocking", action="store_true", help="run only the blocked-time comparison")
    args = ap.parse_args()
    sizes = [] if args.only_blocking else [int(s) for s in args.sizes.split(",") if s]
    blocking_sizes = [int(s) for s in args.blocking_sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]

    server = None
    if "s3" in backends:
        from tests._s3server import start_moto

        server = start_moto(bucket="flyte-ray-bench")
    results: list[Row] = []
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
                    rows = bench_backend(b, root, options, src, size, work, args.repeat, args.min_time, args.max_runs)
                    for r in rows:
                        results.append(r)
                        print(
                            f"  {size} MB {b:5s} {r.op:7s} raw {min(r.raw):8.4f}s  flyte-ray {min(r.ours):8.4f}s"
                            f"  ({len(r.raw)} runs)",
                            flush=True,
                        )
                src.unlink()
            blocked: list[Blocked] = []
            for size in blocking_sizes:
                src = work / f"payload-{size}mb.bin"
                _make_payload(src, size)
                for b in backends:
                    root = str(work / "store" / f"b{size}") if b == "local" else f"{server.url}/b{size}"  # type: ignore[union-attr]
                    options = {} if b == "local" else server.options  # type: ignore[union-attr]
                    for r in bench_blocking(b, root, options, src, size, 1 if size >= 1000 else args.blocking_runs):
                        blocked.append(r)
                        print(f"  {size} MB {b:5s} {r.source:5s} foreground {min(r.fg):8.4f}s  background blocked "
                              f"{min(r.bg):8.4f}s", flush=True)
                src.unlink()
                shutil.rmtree(work / "store", ignore_errors=True)
    finally:
        if server is not None:
            server.stop()

    if blocked:
        print()
        print("loop time blocked per save (best run): foreground save vs background save (snapshot only);")
        print("ratio = background / foreground (bar: <= 0.10 at 200 MB and above); upload s = the background")
        print("upload's own time, off the caller's thread")
        print(f"{'size':>7} | {'backend':7} | {'source':6} | {'foreground s':>12} | {'background s':>12} | "
              f"{'ratio':>6} | {'upload s':>8}")
        for r in blocked:
            fg, bg = min(r.fg), min(r.bg)
            print(f"{r.size:>4} MB | {r.backend:7} | {r.source:6} | {fg:12.4f} | {bg:12.4f} | {bg / fg:6.3f} | "
                  f"{min(r.upload):8.3f}")
    if not results:
        return

    print()
    print("raw s / flyte-ray s: best run; ratio = flyte-ray / raw fsspec, best runs (bar: <= 1.10);")
    print("median = the same for the median runs; prune s = the slowest background pruning after a")
    print("save (waited for apart, not part of the save timing; see the module docstring)")
    print(
        f"{'size':>7} | {'backend':7} | {'op':7} | {'runs':>4} | {'raw s':>8} | {'flyte-ray s':>11} | "
        f"{'ratio':>6} | {'median':>6} | {'prune s':>7}"
    )
    print(f"{'-' * 7}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 4}-+-{'-' * 8}-+-{'-' * 11}-+-{'-' * 6}-+-{'-' * 6}-+-{'-' * 7}")
    for r in results:
        raw, ours = min(r.raw), min(r.ours)
        med = statistics.median(r.ours) / statistics.median(r.raw)
        pr = f"{max(r.prune):7.4f}" if r.op == "save" else f"{'':7}"
        print(
            f"{r.size:>4} MB | {r.backend:7} | {r.op:7} | {len(r.raw):>4} | {raw:8.4f} | {ours:11.4f} | "
            f"{ours / raw:5.2f}x | {med:5.2f}x | {pr}"
        )


if __name__ == "__main__":
    main()
