"""The docs name only what exists: every ``ctx().<field>`` in README.md, cluster-configs/README.md
and examples/ (and the fields README's ``flyte.ctx()`` bullet lists) is an attribute of
:class:`flyte_ray.context.TaskContext`."""

import dataclasses
import re
from pathlib import Path

from flyte_ray.context import TaskContext

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "cluster-configs" / "README.md", *sorted((ROOT / "examples").glob("*.py"))]


def _ctx_names() -> set:
    names = {f.name for f in dataclasses.fields(TaskContext) if not f.name.startswith("_")}
    return names | {n for n, v in vars(TaskContext).items() if isinstance(v, property)}


def test_ctx_fields_in_docs_exist():
    known = _ctx_names()
    used = {}
    for path in DOCS:
        for name in re.findall(r"ctx\(\)\.(\w+)", path.read_text()):
            used.setdefault(name, path.name)
    readme = (ROOT / "README.md").read_text()
    bullet = re.search(r"`flyte\.ctx\(\)` inside a task(.*?)\n\*", readme, re.S)
    assert bullet, "README lost its flyte.ctx() bullet"
    for name in re.findall(r"`([a-z_]+)`", bullet.group(1)):  # field names (not `None`)
        used.setdefault(name, "README.md (ctx bullet)")
    unknown = {n: where for n, where in used.items() if n not in known}
    assert not unknown, f"not TaskContext attributes: {unknown} (it has {sorted(known)})"
    assert {"node_id", "attempt", "market", "checkpoint"} <= set(used)
