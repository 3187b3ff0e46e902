"""Compute resources (``Resources``, ``GPU``, ``TPU``) and how they become Ray options.

Flyte's resource vocabulary, mapped onto Ray's scheduler:

=====================  ===================================================  ==================
flyte-ray              Ray                                                  enforced by Ray?
=====================  ===================================================  ==================
``cpu`` request        ``num_cpus``                                         scheduled only
``memory`` request     ``memory`` (bytes)                                   scheduled only [1]
``gpu`` count          ``num_gpus``                                         yes (CUDA_VISIBLE_DEVICES)
GPU type               ``accelerator_type`` → resource ``accelerator_type:<T>``  scheduled only
MIG partition          custom resource ``gpu-partition:<device>:<part>``    scheduled only
TPU slice              ``accelerator_type:TPU-<device>`` + ``tpu:<device>:<slice>``  scheduled only
limits, disk, shm      recorded on the task, not sent to Ray                not enforced
=====================  ===================================================  ==================

[1] Ray's memory monitor kills the worker using the most memory when a node runs low; flyte-ray
reports that as ``OOMError``. Ray does not cap a task at its ``memory`` request.

GPU type names follow flyte-sdk; the Ray ``accelerator_type`` they map to is what Ray detects on
NVIDIA nodes (``"A100"``, ``"H100"``, ``"L40S"``...). ``"A100 80G"`` maps to ``"A100-80G"``, which
Ray does *not* detect by itself (it reports every A100 as ``"A100"``): nodes with 80 GB A100s must
declare ``accelerator_type:A100-80G`` in their resources (see ``cluster-configs/README.md``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Optional, Tuple, Union, get_args

from ._duration import count, short_repr

__all__ = ["Resources", "GPU", "TPU", "Device", "parse_cpu", "parse_memory"]

GPUType = Literal[
    "A10", "A10G", "A100", "A100 80G", "B200", "H100", "H200", "L4", "L40s", "T4", "V100", "RTX PRO 6000", "GB10"
]
TPUType = Literal["V5P", "V6E"]

#: flyte GPU name -> Ray accelerator_type
RAY_ACCELERATOR_TYPE: dict[str, str] = {
    "A10": "A10",
    "A10G": "A10G",
    "A100": "A100",
    "A100 80G": "A100-80G",
    "B200": "B200",
    "H100": "H100",
    "H200": "H200",
    "L4": "L4",
    "L40s": "L40S",
    "T4": "T4",
    "V100": "V100",
    "RTX PRO 6000": "RTX-PRO-6000",
    "GB10": "GB10",
}

MIG_PARTITIONS: dict[str, tuple[str, ...]] = {
    "A100": ("1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    "A100 80G": ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "H100": ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "H200": ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
}

TPU_SLICES: dict[str, tuple[str, ...]] = {
    "V5P": ("2x2x1", "2x2x2", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16", "8x16x16", "16x16x16", "16x16x24"),
    "V6E": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}

_GPU_TYPES = get_args(GPUType)


#: The largest amount of CPUs or GPUs one attempt may request: more is a typo that would pend forever.
MAX_AMOUNT = 1_000_000
#: Ray accounts fractional resources in units of 0.0001; a smaller non-zero request cannot be scheduled.
RAY_GRANULARITY = 0.0001
#: Ray keeps memory in a signed 64-bit count of bytes.
MAX_MEMORY = 2**63 - 1


@dataclass(frozen=True)
class Device:
    """An accelerator request: a class (``"GPU"`` or ``"TPU"``), a device type, a quantity, a partition.

    Build it with :func:`GPU` or :func:`TPU`; a ``Device`` made directly is validated the same way.
    """

    quantity: int
    device_class: Literal["GPU", "TPU"] = "GPU"
    device: Optional[str] = None
    partition: Optional[str] = None

    def __post_init__(self) -> None:
        if self.device_class not in ("GPU", "TPU"):
            raise ValueError(f"Device.device_class: expected 'GPU' or 'TPU', got {short_repr(self.device_class)}")
        _check_device(self.device_class, self.device, self.quantity, self.partition, "Device")

    @property
    def partition_resource(self) -> Optional[str]:
        """The Ray custom resource that nodes offering this partition / slice declare."""
        if self.partition is None:
            return None
        prefix = "gpu-partition" if self.device_class == "GPU" else "tpu"
        return f"{prefix}:{(self.device or '').replace(' ', '')}:{self.partition}"

    @property
    def ray_accelerator_type(self) -> Optional[str]:
        """The value for Ray's ``accelerator_type`` option (``None`` when any type will do)."""
        if self.device is None:
            return None
        if self.device_class == "TPU":
            return f"TPU-{self.device}"
        return RAY_ACCELERATOR_TYPE[self.device]


def _check_device(device_class: str, device: Any, quantity: Any, partition: Any, where: str) -> None:
    """The checks of :func:`GPU` / :func:`TPU` / ``Device``; errors name ``<where>.<field>``."""
    types: tuple[str, ...] = _GPU_TYPES if device_class == "GPU" else tuple(TPU_SLICES)
    if device is not None or device_class == "TPU":
        if not isinstance(device, str):
            raise TypeError(
                f"{where}.device: expected a {device_class} type name ({', '.join(map(repr, types))}), "
                f"got {type(device).__name__}"
            )
        if device not in types:
            raise ValueError(
                f"{where}.device: unknown {device_class} type {short_repr(device)}; accepted: "
                f"{', '.join(map(repr, types))}"
            )
    count(quantity, f"{where}.quantity", lo=1, hi=MAX_AMOUNT, accepted=f"an int >= 1 (at most {MAX_AMOUNT})")
    if device_class == "TPU" and quantity != 1:
        raise ValueError(f"{where}.quantity: a TPU request is one slice (quantity 1); choose the slice with partition")
    if partition is None:
        return
    if not isinstance(partition, str):
        raise TypeError(f"{where}.partition: expected a partition name or None, got {type(partition).__name__}")
    parts = (MIG_PARTITIONS if device_class == "GPU" else TPU_SLICES).get(device or "")
    if parts is None:
        raise ValueError(
            f"{where}.partition: {device or 'a GPU of any type'} has no MIG partitions; "
            f"partitions exist for {', '.join(MIG_PARTITIONS)}"
        )
    if partition not in parts:
        kind = "MIG partition" if device_class == "GPU" else "slice"
        raise ValueError(
            f"{where}.partition: {short_repr(partition)} is not a {kind} of {device}; accepted: {', '.join(parts)}"
        )


def GPU(device: str, quantity: int = 1, partition: Optional[str] = None) -> Device:
    """A GPU request: ``GPU("A100", 2)``, ``GPU("A100", 1, partition="1g.5gb")`` (a MIG slice).

    Args:
        device: one of ``A10, A10G, A100, "A100 80G", B200, H100, H200, L4, L40s, T4, V100,
            "RTX PRO 6000", GB10``.
        quantity: number of GPUs, an int from 1 to 1,000,000.
        partition: a MIG partition valid for ``device`` (A100, A100 80G, H100, H200 only).
    """
    if device is None:
        raise TypeError(f"GPU.device: expected a GPU type name ({', '.join(map(repr, _GPU_TYPES))}), got None")
    _check_device("GPU", device, quantity, partition, "GPU")
    return Device(quantity=quantity, device_class="GPU", device=device, partition=partition)


def TPU(device: str, partition: Optional[str] = None) -> Device:
    """A TPU request: ``TPU("V5P", "2x2x1")``. ``device`` is ``"V5P"`` or ``"V6E"``."""
    _check_device("TPU", device, 1, partition, "TPU")
    return Device(quantity=1, device_class="TPU", device=device, partition=partition)


# ASCII digits only (``\d`` would take other scripts' digits), a bounded number of them, fullmatch.
_CPU_RE = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,12})?)\s*(m?)\s*", re.ASCII)
_MEM_RE = re.compile(r"\s*([0-9]{1,24}(?:\.[0-9]{1,24})?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|K|M|G|T|P|E|k)?\s*", re.ASCII)
_MEM_UNITS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}

CPUValue = Union[int, float, str]


def _amount(value: float, field_name: str, accepted: str) -> float:
    """A CPU amount Ray can schedule: 0, or within [RAY_GRANULARITY, MAX_AMOUNT]."""
    if value != value or value < 0:  # NaN or negative
        raise ValueError(f"{field_name}: must be a finite number >= 0, got {short_repr(value)}; accepted: {accepted}")
    if 0 < value < RAY_GRANULARITY:
        raise ValueError(
            f"{field_name}: {short_repr(value)} is below Ray's granularity of {RAY_GRANULARITY} "
            f"(0 or at least 0.1m); accepted: {accepted}"
        )
    if value > MAX_AMOUNT:
        raise ValueError(f"{field_name}: at most {MAX_AMOUNT} (no node has more), got {short_repr(value)}")
    return float(value)


def parse_cpu(value: CPUValue, field_name: str = "Resources.cpu") -> float:
    """``2`` → 2.0, ``0.5`` → 0.5, ``"500m"`` → 0.5, ``"2"`` → 2.0.

    Accepted: 0 (the attempt holds no CPU, as Ray's ``num_cpus=0``) or an amount from 0.0001
    (Ray's granularity) to 1,000,000. A bool or another type → ``TypeError``; a negative, NaN,
    infinite, too small, too large or malformed amount → ``ValueError``.
    """
    accepted = (
        f'an int or float >= 0 (0, or from {RAY_GRANULARITY} to {MAX_AMOUNT}), a string like "2", "0.5" or '
        '"500m", or a (request, limit) tuple'
    )
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{field_name}: expected {accepted}, got {type(value).__name__} {short_repr(value)}")
    if isinstance(value, int):  # bounds first: an int may be beyond a float's range
        if value < 0:
            raise ValueError(f"{field_name}: must be >= 0, got {short_repr(value)}; accepted: {accepted}")
        if value > MAX_AMOUNT:
            raise ValueError(f"{field_name}: at most {MAX_AMOUNT} (no node has more), got {short_repr(value)}")
        return float(value)
    if isinstance(value, float):
        if math.isinf(value):
            raise ValueError(f"{field_name}: must be finite, got {value!r}; accepted: {accepted}")
        return _amount(value, field_name, accepted)
    m = _CPU_RE.fullmatch(value)
    if not m:
        raise ValueError(f"{field_name}: expected {accepted}, got {short_repr(value)}")
    n = float(m.group(1))
    return _amount(n / 1000.0 if m.group(2) else n, field_name, accepted)


def parse_memory(value: Union[str, int], field_name: str = "Resources.memory") -> int:
    """``"4Gi"`` → 4294967296, ``"512Mi"``, ``"500M"``, ``"1G"``, or an int of bytes.

    The result is a whole number of bytes from 1 to 2**63 - 1 (what Ray can hold): ``"0.00001"``
    or ``0`` → ``ValueError``, not a request for no memory. A bool, a float or another type →
    ``TypeError``.
    """
    accepted = (
        'a string like "512Mi", "4Gi", "500M", "1G", an int of bytes (>= 1, < 2**63), or a (request, limit) tuple'
    )
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{field_name}: expected {accepted}, got {type(value).__name__} {short_repr(value)}")
    if isinstance(value, int):
        n = value
    else:
        m = _MEM_RE.fullmatch(value)
        if not m:
            raise ValueError(f"{field_name}: expected {accepted}, got {short_repr(value)}")
        # Exact arithmetic: a float would lose bytes of large values and round tiny ones to 0.
        n = int(Fraction(m.group(1)) * _MEM_UNITS[m.group(2)])
    if n < 1:
        raise ValueError(f"{field_name}: {short_repr(value)} is less than 1 byte; accepted: {accepted}")
    if n > MAX_MEMORY:
        raise ValueError(f"{field_name}: {short_repr(value)} is more than Ray can hold (2**63 - 1 bytes)")
    return n


def _parse_gpu(value: Any) -> Optional[Device]:
    accepted = (
        f'an int >= 0 (at most {MAX_AMOUNT}), a string "<type>:<count>" such as "A100:1" or "T4:2" (types: '
        + ", ".join(_GPU_TYPES)
        + "), or GPU(...) / TPU(...)"
    )
    if value is None:
        return None
    if isinstance(value, Device):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        n = count(value, "Resources.gpu", lo=0, hi=MAX_AMOUNT, accepted=accepted)
        return Device(quantity=n) if n else None
    if not isinstance(value, str):
        raise TypeError(f"Resources.gpu: expected {accepted}, got {type(value).__name__} {short_repr(value)}")
    name, colon, n_text = value.rpartition(":")
    if not colon:
        raise ValueError(f"Resources.gpu: expected {accepted}, got {short_repr(value)}")
    if name not in _GPU_TYPES:
        raise ValueError(
            f"Resources.gpu: unknown GPU type {short_repr(name)} in {short_repr(value)}; expected {accepted}"
        )
    if not re.fullmatch("[0-9]{1,7}", n_text, re.ASCII) or not 1 <= int(n_text) <= MAX_AMOUNT:
        raise ValueError(f"Resources.gpu: bad count {short_repr(n_text)} in {short_repr(value)}; expected {accepted}")
    return GPU(name, int(n_text))


def _request_limit(value: Any, field_name: str) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{field_name}: a (request, limit) tuple needs exactly 2 items, got {value!r}")
        return value[0], value[1]
    return value, None


@dataclass(frozen=True)
class Resources:
    """Compute resources for a task's attempts.

    Examples::

        Resources(cpu=2, memory="4Gi")
        Resources(cpu="500m", memory=("1Gi", "2Gi"))       # (request, limit)
        Resources(cpu=1, gpu="A100:1")                      # type:count
        Resources(gpu=GPU("H100", 1, partition="1g.10gb"))  # a MIG slice
        Resources(gpu=TPU("V5P", "2x2x1"))

    Ray schedules on the *request*; limits, ``disk`` and ``shm`` are recorded but not enforced
    by Ray (see the module docstring). With no ``cpu`` given an attempt asks for 1 CPU, as a
    plain ``ray.remote`` function does.

    Every amount is checked here, at definition time, against what Ray can schedule (see
    :func:`parse_cpu`, :func:`parse_memory`): a wrong type is a ``TypeError``, a NaN, infinite,
    negative, too small or too large amount a ``ValueError`` naming the field.

    Args:
        cpu: cores: int, float, ``"500m"``, ``"2"``, or a (request, limit) tuple; 0 or from
            0.0001 (Ray's granularity) to 1,000,000.
        memory: ``"512Mi"``, ``"4Gi"``, ``"500M"``, bytes as int, or a (request, limit) tuple;
            from 1 byte to 2**63 - 1 bytes.
        gpu: a count (0: none; at most 1,000,000), ``"A100:1"``, ``GPU(...)`` or ``TPU(...)``.
        disk: ephemeral disk, e.g. ``"10Gi"`` (recorded only).
        shm: shared memory, e.g. ``"1Gi"`` or ``"auto"`` (recorded only).
    """

    cpu: Union[CPUValue, Tuple[CPUValue, CPUValue], None] = None
    memory: Union[str, int, Tuple[Union[str, int], Union[str, int]], None] = None
    gpu: Union[int, str, Device, None] = None
    disk: Optional[str] = None
    shm: Optional[str] = None
    # Parsed values, computed once at definition time so bad input fails here.
    _ray: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        opts: dict[str, Any] = {}
        cpu_req, cpu_lim = _request_limit(self.cpu, "Resources.cpu")
        if cpu_req is not None:
            opts["num_cpus"] = parse_cpu(cpu_req)
        if cpu_lim is not None and parse_cpu(cpu_lim, "Resources.cpu (limit)") < opts.get("num_cpus", 0):
            raise ValueError(f"Resources.cpu: limit {cpu_lim!r} is below the request {cpu_req!r}")
        mem_req, mem_lim = _request_limit(self.memory, "Resources.memory")
        if mem_req is not None:
            opts["memory"] = parse_memory(mem_req)
        if mem_lim is not None and parse_memory(mem_lim, "Resources.memory (limit)") < opts.get("memory", 0):
            raise ValueError(f"Resources.memory: limit {mem_lim!r} is below the request {mem_req!r}")
        dev = _parse_gpu(self.gpu)
        custom: dict[str, float] = {}
        if dev is not None:
            part = dev.partition_resource
            if part:
                custom[part] = float(dev.quantity)
            elif dev.device_class == "GPU":
                opts["num_gpus"] = dev.quantity
            acc = dev.ray_accelerator_type
            if acc:
                opts["accelerator_type"] = acc
        if custom:
            opts["resources"] = custom
        for name in ("disk", "shm"):
            v = getattr(self, name)
            if v is None or (name == "shm" and v == "auto"):
                continue
            parse_memory(v, f"Resources.{name}")
        object.__setattr__(self, "_ray", opts)

    @property
    def device(self) -> Optional[Device]:
        """The accelerator request, if any."""
        return _parse_gpu(self.gpu)

    def ray_options(self) -> dict[str, Any]:
        """Ray ``.options(...)`` keyword arguments for these requests (a fresh dict)."""
        out = dict(self._ray)
        if "resources" in out:
            out["resources"] = dict(out["resources"])
        return out
