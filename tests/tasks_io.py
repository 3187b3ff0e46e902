"""Tasks used by test_io.py (a module, so workers import them by reference)."""

import asyncio
import os
import tempfile
import threading
from pathlib import Path

import flyte_ray as flyte
from flyte_ray.io import DataFrame, Dir, File

env = flyte.TaskEnvironment(name="io")

#: The tree write_dir uploads: relative name -> content.
TREE = {"a.txt": "A", "sub/b.txt": "B", "sub/deeper/c.txt": "C"}


def _tree_of(root: str) -> dict:
    got = {}
    for folder, _, names in os.walk(root):
        for n in names:
            p = os.path.join(folder, n)
            with open(p) as f:
                got[os.path.relpath(p, root).replace(os.sep, "/")] = f.read()
    return got


@env.task
def write_file(text: str) -> tuple:
    """A local file uploaded with from_local_sync (the local copy is gone once it returns)."""
    p = os.path.join(tempfile.mkdtemp(), "note.txt")
    with open(p, "w") as f:
        f.write(text)
    out = File.from_local_sync(p)
    os.unlink(p)
    return out, flyte.ctx().run_name


@env.task
def read_file(f: File) -> dict:
    with f.open_sync("rb") as fh:
        data = fh.read().decode()
    with f.open_sync("r") as fh:
        text = fh.read()
    with open(f.download_sync()) as fh:
        downloaded = fh.read()
    return {"open": data, "text": text, "download": downloaded, "exists": f.exists_sync(), "name": f.name}


@env.task
async def awrite_file(text: str) -> File:
    """A new object streamed in small writes through the async handle."""
    f = File.new_remote("stream.txt")
    async with f.open("wb") as fh:
        for i in range(0, len(text), 3):
            await fh.write(text[i : i + 3].encode())
    return f


@env.task
async def aread_file(f: File) -> dict:
    async with f.open("rb") as fh:
        data = bytes(await fh.read()).decode()
    downloaded = await asyncio.to_thread(Path(await f.download()).read_text)
    return {"open": data, "download": downloaded, "exists": await f.exists(), "name": f.name}


@env.task
def write_dir() -> Dir:
    root = os.path.join(tempfile.mkdtemp(), "tree")
    for rel, text in TREE.items():
        p = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    return Dir.from_local_sync(root)


@env.task
def read_dir(d: Dir) -> dict:
    b = d.get_file_sync("sub/b.txt")
    assert b is not None
    with b.open_sync("r") as fh:
        b_text = fh.read()
    return {
        "download": _tree_of(d.download_sync()),
        "walk": [f.name for f in d.walk_sync()],
        "top": [f.name for f in d.list_files_sync()],
        "depth2": [f.name for f in d.walk_sync(max_depth=2)],
        "b": b_text,
        "missing": d.get_file_sync("nope.txt"),
        "exists": d.exists_sync(),
    }


@env.task
async def aread_dir(d: Dir) -> dict:
    b = await d.get_file("sub/b.txt")
    assert b is not None
    async with b.open("rb") as fh:
        b_text = bytes(await fh.read()).decode()
    return {
        "download": _tree_of(await d.download()),
        "walk": [f.name async for f in d.walk()],
        "top": [f.name for f in await d.list_files()],
        "b": b_text,
        "exists": await d.exists(),
    }


@env.task
def make_df(n: int) -> DataFrame:
    import pandas as pd

    return DataFrame.from_df(pd.DataFrame({"x": list(range(n)), "y": [f"r{i}" for i in range(n)]}))


@env.task
async def sum_df(df: DataFrame) -> dict:
    import pandas as pd
    import pyarrow as pa

    table = await df.open(pd.DataFrame).all()
    arrow = df.open(pa.Table).all_sync()
    return {"sum": int(table["x"].sum()), "y": list(table["y"]), "rows": arrow.num_rows}


@env.task
def io_in_plain_thread() -> str:
    """A thread the task starts without its context does not know the run's storage."""
    out = {}

    def run() -> None:
        try:
            File.new_remote()
            out["r"] = "no error"
        except RuntimeError as e:
            out["r"] = str(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["r"]
