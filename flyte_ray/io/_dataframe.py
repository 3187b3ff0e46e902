"""``DataFrame``: a table stored as parquet, flyte-sdk's ``flyte.io.DataFrame``.

Rules (the package docstring has the ones File, Dir and DataFrame share):

* Tables are stored as parquet, never pickled: a DataFrame is a folder URL (``<uri>/00000.parquet``
  when flyte-ray wrote it), the format (``"parquet"``, the only one) and an optional cache key.
  Reading accepts a single parquet object or a folder of parts (names starting with ``_`` or
  ``.``, such as ``_SUCCESS``, are skipped).
* flyte-sdk uploads a wrapped table when its type engine meets it at the task boundary; flyte-ray
  has no type engine (Ray pickles task values), so ``from_df`` / ``wrap_df`` / ``from_local``
  write the parquet at once, and the object that crosses Ray holds only the URL. In async code
  prefer ``await DataFrame.from_local(df)``, which writes off the event loop.
* pandas and pyarrow are optional: without them using a DataFrame raises ImportError naming what
  to install. pyarrow older than 14.0.1 is refused: reading untrusted parquet with it can run
  code (CVE-2023-47248).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ._where import cache_key, fs_call, new_url, shown, split, store_at, to_url

__all__ = ["PARQUET", "DataFrame"]

#: The storage format of every DataFrame flyte-ray writes (and the only one it reads).
PARQUET = "parquet"
#: The object a DataFrame written by flyte-ray holds, inside its folder.
PART = "00000.parquet"
_INSTALL = "pip install 'flyte-ray[dataframe]' (or: pip install pandas pyarrow)"
_MIN_PYARROW = (14, 0, 1)


class DataFrame:
    """A table in storage (flyte-sdk's ``flyte.io.DataFrame``): pass it between tasks and read
    it with ``df.open(pandas.DataFrame).all()`` (async) or ``.all_sync()``.

    Make one with ``DataFrame.from_df(table)`` (alias ``wrap_df``), ``await
    DataFrame.from_local(table)`` / ``from_local_sync``, or ``from_existing_remote(uri)``;
    ``table`` is a ``pandas.DataFrame`` or a ``pyarrow.Table``.

    Args:
        uri: the parquet object or folder of parts (URL or local path).
        format: ``"parquet"`` (``None`` and ``""`` mean it too).
        hash: a cache key for the table's content, kept as given.
    """

    __slots__ = ("_as", "format", "hash", "uri")

    def __init__(self, uri: Optional[str] = None, format: Optional[str] = PARQUET, hash: Optional[str] = None):
        self.uri = None if uri is None else to_url(uri, "uri")
        if format not in (None, "", PARQUET):
            raise ValueError(f"format: flyte_ray.io.DataFrame stores and reads {PARQUET!r} only, got {format!r}")
        self.format = PARQUET
        if hash is not None and not isinstance(hash, str):
            raise TypeError(f"hash: expected a str or None, got {type(hash).__name__}")
        self.hash = hash
        self._as: Any = None  # the type open() chose; never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "format": self.format, "hash": self.hash}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.uri, self.format, self.hash = state["uri"], state["format"], state.get("hash")
        self._as = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataFrame):
            return NotImplemented
        return (self.uri, self.format, self.hash) == (other.uri, other.format, other.hash)

    __hash__ = None  # type: ignore[assignment]  # mutable, like flyte-sdk's

    def __flyte_ray_cache_key__(self) -> str:
        """Its content hash when it has one, else its location (:func:`._where.cache_key`)."""
        return cache_key(self.hash, self.uri)

    def __repr__(self) -> str:
        uri = None if self.uri is None else shown(self.uri)
        return f"DataFrame(uri={uri!r}, format={self.format!r})"

    # ---- making one -------------------------------------------------------------------------

    @classmethod
    def from_df(cls, val: Any = None, uri: Optional[str] = None) -> DataFrame:
        """Store ``val`` (a ``pandas.DataFrame`` or ``pyarrow.Table``) as parquet at ``uri``
        (default: a new folder in the run's storage) and return its DataFrame; with ``val``
        None, a reference to ``uri``. Blocks while it writes (module docstring)."""
        if val is None:
            if uri is None:
                raise ValueError("DataFrame.from_df: give val (a pandas.DataFrame or pyarrow.Table), or uri")
            return cls(uri=uri)
        return cls._write(val, uri, None)

    wrap_df = from_df

    @classmethod
    def from_local_sync(
        cls,
        df: Any,
        columns: Any = None,
        remote_destination: Optional[str] = None,
        hash_method: Optional[str] = None,
    ) -> DataFrame:
        """Store ``df`` as parquet and return its DataFrame (blocking form of :meth:`from_local`).

        Args:
            df: a ``pandas.DataFrame`` or ``pyarrow.Table``.
            columns: not supported (select the columns first); must be None.
            remote_destination: the folder to write (URL or local path); default: a new folder
                in the run's storage.
            hash_method: a precomputed cache key (str) for the table's content.
        """
        if columns is not None:
            raise ValueError("columns: not supported by flyte_ray.io.DataFrame; select the columns before storing")
        if hash_method is not None and not isinstance(hash_method, str):
            got = type(hash_method).__name__
            raise TypeError(f"hash_method: flyte_ray.io takes a precomputed cache key (str) or None, got {got}")
        return cls._write(df, remote_destination, hash_method)

    @classmethod
    async def from_local(
        cls,
        df: Any,
        columns: Any = None,
        remote_destination: Optional[str] = None,
        hash_method: Optional[str] = None,
    ) -> DataFrame:
        """Store ``df`` as parquet and return its DataFrame (see :meth:`from_local_sync`)."""
        return await asyncio.to_thread(cls.from_local_sync, df, columns, remote_destination, hash_method)

    @classmethod
    def from_existing_remote(cls, remote_path: str, format: Optional[str] = None, **kwargs: Any) -> DataFrame:
        """A reference to parquet that already exists (an object, or a folder of parts)."""
        unknown = sorted(set(kwargs) - {"hash"})
        if unknown:
            raise TypeError(f"DataFrame.from_existing_remote: unexpected keyword arguments {unknown}; accepted: hash")
        return cls(uri=to_url(remote_path, "remote_path"), format=format, hash=kwargs.get("hash"))

    @classmethod
    def _write(cls, val: Any, uri: Optional[str], key: Optional[str]) -> DataFrame:
        pa, pq = _arrow()
        if isinstance(val, pa.Table):
            table = val
        elif _is_pandas(val):
            table = pa.Table.from_pandas(val)
        else:
            raise TypeError(f"expected a pandas.DataFrame or a pyarrow.Table to store, got {type(val).__name__}")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        dest = new_url("df") if uri is None else to_url(uri, "uri")
        store = store_at(dest)
        store.put_atomic(PART, data)
        return cls(uri=store.url, hash=key)

    # ---- reading ----------------------------------------------------------------------------

    def open(self, dataframe_type: type) -> DataFrame:
        """Choose the type ``all`` returns: ``pandas.DataFrame`` or ``pyarrow.Table``."""
        pa, _ = _arrow()
        pandas_df = _pandas_type()
        if dataframe_type is not pa.Table and (pandas_df is None or dataframe_type is not pandas_df):
            got = getattr(dataframe_type, "__name__", dataframe_type)
            raise TypeError(f"DataFrame.open: expected pandas.DataFrame or pyarrow.Table, got {got!r}")
        self._as = dataframe_type
        return self

    def all_sync(self) -> Any:
        """The whole table, as the type chosen with :meth:`open`."""
        if self._as is None:
            raise ValueError("DataFrame.all: call open(pandas.DataFrame) or open(pyarrow.Table) first")
        if self.uri is None:
            raise ValueError("DataFrame.all: this DataFrame has no uri")
        table = self._read()
        pa, _ = _arrow()
        return table if self._as is pa.Table else table.to_pandas()

    async def all(self) -> Any:
        """The whole table (async form of :meth:`all_sync`)."""
        return await asyncio.to_thread(self.all_sync)

    def _read(self) -> Any:
        pa, pq = _arrow()
        assert self.uri is not None
        parent, leaf = split(self.uri)
        outer = store_at(parent)
        try:
            info = fs_call(outer, "info", leaf, "info")
        except FileNotFoundError:
            raise FileNotFoundError(f"DataFrame {shown(self.uri)} does not exist") from None
        if info.get("type") == "directory":
            store = store_at(self.uri)
            keys = [k for k in store.find("") if k and not any(p[:1] in ("_", ".") for p in k.split("/"))]
        else:
            store, keys = outer, [leaf]
        if not keys:
            raise FileNotFoundError(f"DataFrame {shown(self.uri)} holds no parquet parts")
        tables = []
        for k in keys:
            data = store.get(k)
            if data is None:
                raise FileNotFoundError(f"DataFrame {shown(self.uri)}: part {k!r} disappeared while reading")
            tables.append(pq.read_table(pa.BufferReader(data)))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _arrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or ImportError saying what to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"flyte_ray.io.DataFrame stores tables as parquet with pyarrow: {_INSTALL}") from e
    version = tuple(int(x) if x.isdigit() else 0 for x in pa.__version__.split(".")[:3])
    if version < _MIN_PYARROW:
        raise ImportError(
            f"flyte_ray.io.DataFrame needs pyarrow >= 14.0.1 (older ones can run code from untrusted parquet, "
            f"CVE-2023-47248); found {pa.__version__}"
        )
    return pa, pq


def _pandas_type() -> Any:
    try:
        import pandas
    except ImportError:
        return None
    return pandas.DataFrame


def _is_pandas(val: Any) -> bool:
    t = _pandas_type()
    return t is not None and isinstance(val, t)
