"""docs/flyte-compat.md tells the truth about names: every flyte-ray name it marks ``supported`` or
``difference`` exists, every row has a valid status, every ``not supported`` row says why, and every
public name of flyte-sdk's ``flyte`` (and of ``flyte.io``, ``flyte.report``, ``flyte.durable``) has
a row. Starts no Ray: names are imported and looked up, never called.

A flyte-ray name resolves the way user code reaches it: from ``flyte_ray`` by attribute, importing a
submodule where the attribute is missing (``flyte_ray.run.aio`` is the function ``run``'s ``aio``,
not the module ``flyte_ray.run``); the longest importable module prefix is the fallback. On a class,
an instance attribute counts when it is a dataclass field or assigned as ``self.<name>`` in an
``__init__`` of the class or a base (``Run.name``, ``ExecutionParameters.secrets``).
"""

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "flyte-compat.md"
HEADER = ["Upstream", "flyte-ray", "Status", "Notes"]
STATUSES = {"supported", "difference", "not supported"}
NONE = "—"
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# flyte-sdk's public names (flyteorg/flyte-sdk @ 7e2d4231: src/flyte/__init__.py ``__all__``, 66
# names, and the ``__all__`` of flyte.io, flyte.report, flyte.durable).
FLYTE_ALL = [
    "AMD_GPU", "GPU", "HABANA_GAUDI", "TPU", "AppHandle", "AsyncFunctionTaskTemplate", "Backoff",
    "BaseCheckpoint", "Cache", "CachePolicy", "CacheRequest", "Checkpoint", "ConditionWebhook", "Cron",
    "Device", "DeviceClass", "Environment", "FixedRate", "Image", "ImageBuild", "Link", "Neuron",
    "OnArtifact", "PodTemplate", "Resources", "RetryStrategy", "ReusePolicy", "Secret", "SecretRequest",
    "TaskEnvironment", "TaskTemplate", "Timeout", "TimeoutType", "Trigger", "TriggerTime",
    "TriggeredArtifact", "__version__", "build", "build_images", "ctx", "current_domain", "current_project",
    "custom_context", "deploy", "get_custom_context", "group", "init", "init_from_api_key",
    "init_from_config", "init_in_cluster", "init_passthrough", "latest_checkpoint", "load_interactive_ctx",
    "load_plugin_config", "logger", "map", "new_condition", "rerun", "run", "run_python_script", "serve",
    "system_logger", "trace", "version", "with_runcontext", "with_servecontext",
]  # fmt: skip
FLYTE_IO_ALL = ["PARQUET", "DataFrame", "Dir", "EmptyDir", "File", "HashFunction"]
FLYTE_REPORT_ALL = [
    "Report", "Timeline", "abbreviate", "current_report", "duration_ms", "flush", "get_tab", "log", "replace",
]  # fmt: skip
FLYTE_DURABLE_ALL = ["now", "sleep", "time"]


def _cells(line: str) -> list:
    """A table row's cells (``\\|`` is a literal pipe inside a cell)."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _rows() -> list:
    """``(line number, cells)`` of every row of the tables whose header is :data:`HEADER`."""
    rows = []
    in_table = False
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip().startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if cells == HEADER:
            in_table = True
            continue
        if in_table and not all(re.fullmatch(r":?-+:?", c) for c in cells):
            rows.append((n, cells))
    return rows


ROWS = _rows()


def _name(cell: str):
    """The dotted name in a cell written as one backticked name, else None."""
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m and DOTTED.fullmatch(m.group(1)) else None


def _init_assigns(cls: type, attr: str) -> bool:
    """``self.<attr>`` is assigned in an ``__init__`` of ``cls`` or one of its bases."""
    pattern = re.compile(rf"\bself\.{re.escape(attr)}\s*(:[^=\n]*)?=(?!=)")
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            src = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        if pattern.search(src):
            return True
    return False


def _attr(obj, attr: str):
    """``getattr(obj, attr)``, or for a class an instance attribute (module docstring)."""
    try:
        return getattr(obj, attr)
    except AttributeError:
        if inspect.isclass(obj):
            if dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}:
                return None
            if _init_assigns(obj, attr):
                return None
        raise


def _by_attributes(dotted: str):
    """Resolve from the top package by attribute, importing a submodule where one is missing."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    path = parts[0]
    for i, attr in enumerate(parts[1:], 1):
        path = f"{path}.{attr}"
        if inspect.ismodule(obj) and not hasattr(obj, attr):
            try:
                obj = importlib.import_module(path)
                continue
            except ImportError:
                pass
        obj = _attr(obj, attr)
        if obj is None and i < len(parts) - 1:
            raise AttributeError(f"{path} is an instance attribute; cannot look further")
    return obj


def _by_module_prefix(dotted: str):
    """Import the longest importable module prefix, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = _attr(obj, attr)
        return obj
    raise ImportError(f"no importable prefix of {dotted}")


def _resolve(dotted: str) -> None:
    try:
        _by_attributes(dotted)
    except Exception as first:  # noqa: BLE001 -- reported below if the fallback fails too
        try:
            _by_module_prefix(dotted)
        except Exception:  # noqa: BLE001
            raise first from None


def test_table_has_rows():
    assert len(ROWS) > 100, f"{DOC}: expected the compatibility tables, found {len(ROWS)} rows"


def test_rows_are_well_formed():
    problems = []
    for n, cells in ROWS:
        if len(cells) != 4:
            problems.append(f"line {n}: expected 4 cells, got {len(cells)}: {cells}")
            continue
        upstream, ours, status, notes = cells
        if status not in STATUSES:
            problems.append(f"line {n}: status {status!r} is not one of {sorted(STATUSES)}")
        if _name(upstream) is None or not _name(upstream).startswith(("flyte.", "flytekit.")):
            problems.append(f"line {n}: Upstream {upstream!r} is not one backticked flyte./flytekit. dotted name")
        if ours != NONE and (_name(ours) is None or not _name(ours).startswith("flyte_ray")):
            problems.append(f"line {n}: flyte-ray {ours!r} is neither {NONE!r} nor a backticked flyte_ray name")
        if status in ("supported", "difference") and ours == NONE:
            problems.append(f"line {n}: {status} but no flyte-ray name")
        if status == "not supported" and ours != NONE:
            problems.append(f"line {n}: not supported but names {ours} (put the closest alternative in Notes)")
        if status in ("not supported", "difference") and not notes:
            why = "why" if status == "not supported" else "what differs"
            problems.append(f"line {n}: {status} {upstream} needs Notes saying {why}")
    assert not problems, "docs/flyte-compat.md rows:\n" + "\n".join(problems)


def test_no_upstream_name_twice():
    seen = {}
    dupes = []
    for n, cells in ROWS:
        name = _name(cells[0])
        if name in seen:
            dupes.append(f"{name} (lines {seen[name]} and {n})")
        seen[name] = n
    assert not dupes, "rows repeated: " + ", ".join(dupes)


def test_marked_names_resolve():
    failures = []
    for n, cells in ROWS:
        if len(cells) != 4 or cells[2] not in ("supported", "difference"):
            continue
        name = _name(cells[1])
        if name is None:
            continue
        try:
            _resolve(name)
        except Exception as e:  # noqa: BLE001 -- collect every failure
            failures.append(f"line {n}: {name} ({cells[2]}): {type(e).__name__}: {e}")
    assert not failures, "flyte-ray names in docs/flyte-compat.md that do not resolve:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    "module, names",
    [
        ("flyte", FLYTE_ALL),
        ("flyte.io", FLYTE_IO_ALL),
        ("flyte.report", FLYTE_REPORT_ALL),
        ("flyte.durable", FLYTE_DURABLE_ALL),
    ],
)
def test_every_upstream_name_has_a_row(module, names):
    upstream = {_name(cells[0]) for _, cells in ROWS}
    missing = [f"{module}.{x}" for x in names if f"{module}.{x}" not in upstream]
    assert not missing, f"no row in docs/flyte-compat.md for: {', '.join(missing)}"


def test_flyte_all_is_complete():
    # the copied list: flyte-sdk's 66 top-level names, no duplicates
    assert len(FLYTE_ALL) == len(set(FLYTE_ALL)) == 66


@pytest.fixture(scope="module")
def ray_before():
    """Whether Ray was already up when this module's tests began (another module's doing)."""
    import ray

    return ray.is_initialized()


def test_started_no_ray(ray_before):
    import ray

    # Last in the module: none of the checks above started Ray.
    assert ray_before or not ray.is_initialized()
