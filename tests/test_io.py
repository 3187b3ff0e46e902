"""flyte_ray.io (flyte-sdk's File, Dir, DataFrame) on the embedded one-CPU Ray: values written by
one task and read by another, from the driver and on S3 (moto); downloads that refuse a hostile
listing; bad input."""

import asyncio
import os
import pickle
import sys
import uuid

import fsspec
import pytest
import tasks_io as tk

import flyte_ray as flyte
from flyte_ray.io import DataFrame, Dir, File

try:
    from _s3server import s3_server  # noqa: F401 -- session fixture (same import name as the store tests)
except ImportError:  # pragma: no cover
    from tests._s3server import s3_server  # noqa: F401

pytestmark = [pytest.mark.usefixtures("embedded"), pytest.mark.timeout(120)]


def _local(tmp_path, name="in.txt", text="from the driver"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _leftovers(folder):
    return [n for n in os.listdir(folder) if ".part-" in n or ".tmp-" in n]


# --------------------------------------------------------------------------- between tasks
def test_file_written_by_one_task_is_read_by_another(embedded):
    f, run = tk.write_file("hello, io")
    assert isinstance(f, File) and f.name == "note.txt"
    assert f.path.startswith(f"{embedded}/runs/{run}/io/") and f.path.endswith("/note.txt")
    assert len(pickle.dumps(f)) < 400  # path and name only: it crosses Ray as a value
    got = tk.read_file(f)
    assert got == {
        "open": "hello, io",
        "text": "hello, io",
        "download": "hello, io",
        "exists": True,
        "name": "note.txt",
    }


def test_file_async_forms_between_tasks(embedded):
    f = asyncio.run(tk.awrite_file.aio("streamed in threes"))
    assert f.name == "stream.txt" and "/runs/" in f.path
    assert asyncio.run(tk.aread_file.aio(f)) == {
        "open": "streamed in threes",
        "download": "streamed in threes",
        "exists": True,
        "name": "stream.txt",
    }


def test_driver_uploads_and_tasks_read_it_and_existing_remote(embedded, tmp_path):
    f = File.from_local_sync(_local(tmp_path))
    assert f.path.startswith(f"{embedded}/io/") and "/runs/" not in f.path  # the run-less area
    assert tk.read_file(f)["open"] == "from the driver"
    ref = File.from_existing_remote(f.path)
    assert ref.name == "in.txt" and tk.read_file(ref)["download"] == "from the driver"
    g = asyncio.run(File.from_local(_local(tmp_path, "b.txt", "async upload")))
    assert asyncio.run(tk.aread_file.aio(g))["open"] == "async upload"
    # remote_destination: a folder (trailing slash) or an exact object
    h = File.from_local_sync(_local(tmp_path), remote_destination=str(tmp_path / "out") + "/")
    assert h.path == str(tmp_path / "out" / "in.txt") and h.exists_sync()
    assert File.from_local_sync(_local(tmp_path), str(tmp_path / "exact.bin")).name == "in.txt"


def test_dir_with_nested_files_between_tasks():
    d = tk.write_dir()
    assert isinstance(d, Dir) and d.name == "tree" and "/runs/" in d.path
    got = tk.read_dir(d)
    assert got["download"] == tk.TREE
    assert got["walk"] == ["a.txt", "b.txt", "c.txt"] and got["top"] == ["a.txt"]
    assert got["depth2"] == ["a.txt", "b.txt"] and got["b"] == "B"
    assert got["missing"] is None and got["exists"] is True
    agot = asyncio.run(tk.aread_dir.aio(Dir.from_existing_remote(d.path)))
    assert agot == {
        "download": tk.TREE,
        "walk": ["a.txt", "b.txt", "c.txt"],
        "top": ["a.txt"],
        "b": "B",
        "exists": True,
    }


def test_dataframe_round_trip():
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    import pandas as pd

    df = tk.make_df(5)
    assert isinstance(df, DataFrame) and df.format == "parquet" and len(pickle.dumps(df)) < 400
    assert asyncio.run(tk.sum_df.aio(df)) == {"sum": 10, "y": [f"r{i}" for i in range(5)], "rows": 5}
    # the driver reads it too, and from_existing_remote reads the single parquet object
    assert df.open(pd.DataFrame).all_sync()["x"].tolist() == [0, 1, 2, 3, 4]
    part = DataFrame.from_existing_remote(f"{df.uri}/00000.parquet", format="parquet")
    assert asyncio.run(tk.sum_df.aio(part))["sum"] == 10
    up = asyncio.run(DataFrame.from_local(pd.DataFrame({"x": [7, 8], "y": ["a", "b"]})))
    assert asyncio.run(tk.sum_df.aio(up))["sum"] == 15


def test_a_worker_thread_outside_the_task_gets_a_clear_error():
    msg = tk.io_in_plain_thread()
    assert "outside any task" in msg and "to_thread" in msg


# --------------------------------------------------------------------------- S3 (moto)
def test_s3_storage_round_trips(embedded, s3_server, tmp_path):
    root = f"{s3_server['url']}/io-{uuid.uuid4().hex[:8]}"
    flyte.init(storage=root, storage_options=s3_server["options"])
    try:
        f, run = tk.write_file("on s3")
        assert f.path.startswith(f"{root}/runs/{run}/io/")
        assert b"testing" not in pickle.dumps(f) and "testing" not in repr(f)  # no credentials in the value
        assert tk.read_file(f)["download"] == "on s3"
        up = File.from_local_sync(_local(tmp_path, text="driver to s3"))
        assert up.path.startswith(f"{root}/io/") and tk.read_file(up)["open"] == "driver to s3"
        d = tk.write_dir()
        assert d.path.startswith(f"{root}/runs/")
        assert asyncio.run(tk.aread_dir.aio(d))["download"] == tk.TREE
        if _have("pandas") and _have("pyarrow"):
            df = tk.make_df(4)
            assert df.uri.startswith(f"{root}/runs/") and asyncio.run(tk.sum_df.aio(df))["sum"] == 6
        # a failed write publishes nothing (the upload is discarded)
        g = File.new_remote("partial.bin")
        with pytest.raises(RuntimeError, match="boom"), g.open_sync("wb") as fh:
            fh.write(b"x" * 1000)
            raise RuntimeError("boom")
        assert not g.exists_sync()
    finally:
        flyte.init(storage=embedded)


# --------------------------------------------------------------------------- untrusted storage
@pytest.mark.parametrize("bad", ["../../evil.txt", "sub/../../../evil.txt", "a//b.txt", "./x.txt", "/etc-evil"])
def test_dir_download_refuses_a_hostile_listing(tmp_path, bad):
    base = f"/hostile-{uuid.uuid4().hex[:8]}/d"
    mem = fsspec.filesystem("memory")
    mem.pipe_file(f"{base}/ok.txt", b"ok")
    mem.pipe_file(f"{base}/{bad}", b"evil")
    d = Dir.from_existing_remote(f"memory://{base}")
    target = tmp_path / "inner" / "target"
    with pytest.raises(ValueError, match="unsafe name"):
        d.download_sync(target)
    assert not target.exists() or os.listdir(target) == []  # checked before anything was written
    assert list(tmp_path.rglob("*evil*")) == [] and not os.path.exists("/etc-evil")


def test_dir_download_refuses_a_name_that_is_file_and_folder(tmp_path, monkeypatch):
    # S3 can list both "a" and "a/b"; the memory and local file systems cannot hold them
    monkeypatch.setattr(Dir, "_keys", lambda self, store: ["a", "a/b"])
    target = tmp_path / "t"
    with pytest.raises(ValueError, match="both a file and a folder"):
        Dir.from_existing_remote(str(tmp_path)).download_sync(target)
    assert not target.exists()


def test_dir_download_never_writes_through_symlinks_in_the_target(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.txt").write_text("B")
    (src / "a.txt").write_text("A")
    d = Dir.from_local_sync(src)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("keep me")
    # a symlinked folder on the way: refused, nothing written through it
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="symlink"):
        d.download_sync(target)
    assert sorted(os.listdir(outside)) == ["a.txt"]
    # a symlink where a file goes: replaced by the file, its target untouched
    target2 = tmp_path / "target2"
    target2.mkdir()
    (target2 / "a.txt").symlink_to(outside / "a.txt")
    d.download_sync(target2)
    assert not (target2 / "a.txt").is_symlink() and (target2 / "a.txt").read_text() == "A"
    assert (outside / "a.txt").read_text() == "keep me" and _leftovers(target2) == []


def test_symlinks_in_a_local_folder_are_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for upload")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / "link.txt").symlink_to(secret)
    (src / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    d = Dir.from_local_sync(src)
    assert [f.name for f in d.walk_sync()] == ["ok.txt"]
    assert os.listdir(d.download_sync(tmp_path / "dl")) == ["ok.txt"]
    # a Dir on a local path with symlinks: listed and copied without them
    assert [f.name for f in Dir.from_existing_remote(str(src)).walk_sync()] == ["ok.txt"]
    assert os.listdir(Dir.from_existing_remote(str(src)).download_sync(tmp_path / "dl2")) == ["ok.txt"]


# --------------------------------------------------------------------------- writes
def test_a_failed_or_unawaited_write_publishes_nothing(tmp_path):
    f = File.new_remote("out.bin")
    with pytest.raises(RuntimeError, match="boom"), f.open_sync("wb") as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert not f.exists_sync() and _leftovers(os.path.dirname(f.path)) == []

    async def unawaited():
        async with f.open("wb") as fh:
            fh.write(b"never awaited")  # a coroutine nobody awaits: the bytes would be lost

    with pytest.raises(RuntimeError, match="never awaited"), pytest.warns(RuntimeWarning):
        asyncio.run(unawaited())
    assert not f.exists_sync()
    with f.open_sync("w") as fh:
        fh.write("a,b\n1,2\n")
    with f.open_sync("rt") as fh:
        assert fh.readlines() == ["a,b\n", "1,2\n"]
    assert f.download_sync(tmp_path / "x.csv") == str(tmp_path / "x.csv")
    assert f.download_sync(str(tmp_path) + os.sep).endswith("/out.bin")


# --------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"local_path: .* does not exist \(expected an existing local file\)"):
        File.from_local_sync(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is a folder; use Dir.from_local"):
        File.from_local_sync(tmp_path)
    with pytest.raises(TypeError, match="local_path: expected a local path or a URL"):
        File.from_local_sync(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_path: .* is a file; expected an existing local folder"):
        Dir.from_local_sync(_local(tmp_path))
    with pytest.raises(ValueError, match="local_path: .* is missing"):
        Dir.from_local_sync(tmp_path / "nope")
    with pytest.raises(ValueError, match="file_name: 'a/b.txt' is not a plain file name"):
        File.new_remote("a/b.txt")
    with pytest.raises(TypeError, match="hash_method: .* precomputed cache key"):
        File.from_local_sync(_local(tmp_path), hash_method=object())
    f = File.from_local_sync(_local(tmp_path), hash_method="k1")
    assert f.hash == "k1"
    with pytest.raises(ValueError, match=r"mode 'ab' is not supported; use one of \('rb'"):
        with f.open_sync("ab"):
            pass
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['encoding'\]"):
        with f.open_sync("rb", encoding="latin-1"):
            pass
    with pytest.raises(ValueError, match="file_name: expected a relative name inside the folder"):
        Dir.from_existing_remote(str(tmp_path)).get_file_sync("../in.txt")
    with pytest.raises(ValueError, match="max_depth: expected a positive int"):
        list(Dir.from_existing_remote(str(tmp_path)).walk_sync(max_depth=0))
    with pytest.raises(ValueError, match="format: .* 'parquet' only"):
        DataFrame.from_existing_remote(str(tmp_path), format="csv")
    missing = File.from_existing_remote(str(tmp_path / "gone.txt"))
    assert not missing.exists_sync()
    with pytest.raises(FileNotFoundError, match="gone.txt does not exist"):
        missing.download_sync(tmp_path / "dl.txt")
    with pytest.raises(FileNotFoundError, match="gone.txt does not exist"):
        with missing.open_sync():
            pass
    assert _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Dir.from_existing_remote(str(tmp_path / "no-dir")).download_sync(tmp_path / "dl")


def test_dataframe_without_pyarrow_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'flyte-ray\[dataframe\]'"):
        DataFrame.from_df(object())
    with pytest.raises(ImportError, match="pyarrow"):
        DataFrame.from_existing_remote("/x").open(object)  # type: ignore[arg-type]


def test_dataframe_bad_input():
    pytest.importorskip("pyarrow")
    with pytest.raises(TypeError, match="expected a pandas.DataFrame or a pyarrow.Table"):
        DataFrame.from_df([1, 2, 3])
    with pytest.raises(ValueError, match="columns: not supported"):
        DataFrame.from_local_sync(object(), columns={"a": int})
    with pytest.raises(TypeError, match="DataFrame.open: expected pandas.DataFrame or pyarrow.Table, got 'list'"):
        DataFrame.from_existing_remote("/x").open(list)
    with pytest.raises(ValueError, match=r"call open\(pandas.DataFrame\)"):
        DataFrame.from_existing_remote("/x").all_sync()
