"""Price tables for the cost report: what one whole node costs per hour, by market.

flyte-ray ships **no prices**. Cloud prices differ by region, change over time and depend on
your contract; a price that flyte-ray made up would make every report wrong without a sign of it.
You write the table (``examples/prices.example.yaml`` is a template whose numbers are
placeholders), and the report prices only what the table names: node time without a price is
counted and reported as *not priced*, never estimated (:mod:`flyte_ray.report.cost`).

Format, version 1 (a YAML or JSON file for :func:`load_prices`, or the same structure as a dict
for :meth:`PriceTable.from_mapping` / ``init(prices=...)``)::

    version: 1                 # required; this flyte-ray reads version 1
    currency: USD              # required when any price is given: three capital letters
    as_of: "2025-01-01"        # optional: when you took the prices (a string or a YAML date)
    source: "..."              # optional: where you took them from
    instance_types:            # optional: per-hour price of a whole node of this cloud instance type
      m5.2xlarge: {ondemand: 0.384, spot: 0.12, as_of: "...", source: "..."}
    node_types:                # optional: a cluster config's node type ...
      cpu-spot: {instance_type: m5.2xlarge}      # ... priced as that instance type
      gpu-ondemand: {ondemand: 1.006, spot: 0.40}  # ... or with prices of its own

Rules:

* Markets are ``ondemand`` and ``spot`` (the values of ``AttemptEvent.market``); a market may be
  left out or ``null`` (no price for it).
* A price is a number (not a string, not a boolean), finite and ``>= 0``, in ``currency`` per
  hour of one whole node, whatever share of the node an attempt reserved.
* Names (instance types, node types, ``instance_type``) are non-empty strings of at most 256
  characters. A key the format does not define is an error, as is the same key twice in a YAML
  mapping. Every error is a ``ValueError`` naming the field's path (for instance
  ``prices.instance_types.m5.2xlarge.spot``) and what is accepted there.
* A node type entry needs an ``instance_type``, a price, or both.

Lookup (:meth:`PriceTable.price`), for an attempt that ran on node type ``N`` (the cluster
config's name, as the node declared it) and instance type ``I`` (as the node declared it), in
market ``M``:

1. ``node_types[N]``'s own price for ``M``;
2. else, when ``node_types[N]`` names an instance type, that instance type's price for ``M``
   (or none: the table's word on what ``N`` is wins over what the node reported);
3. else (``N`` unknown to the table, or its entry names no instance type)
   ``instance_types[I]``'s price for ``M``;
4. else none: the report counts the node time as not priced.

:meth:`PriceTable.from_cluster_config` reads a ``ray up`` cluster config for the node type →
instance type mapping (AWS ``InstanceType``, GCP ``machineType``, Azure ``vmSize``) and each
node type's market; a config holds no prices, so merge it with your table:
``PriceTable.from_cluster_config("cluster-configs/aws-spot.yaml").merged(load_prices("prices.yaml"))``.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Union

__all__ = [
    "PRICES_VERSION",
    "MARKETS",
    "Rates",
    "NodeTypeEntry",
    "PriceTable",
    "load_prices",
]

PRICES_VERSION = 1
MARKETS = ("ondemand", "spot")
_MAX_NAME = 256
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_TOP_KEYS = ("version", "currency", "as_of", "source", "instance_types", "node_types")
_INFO_KEYS = ("as_of", "source")
_INSTANCE_KEYS = (*MARKETS, *_INFO_KEYS)
_NODE_TYPE_KEYS = ("instance_type", *MARKETS, *_INFO_KEYS)

PriceSource = Union["PriceTable", Mapping[str, Any], str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Rates:
    """Per-hour prices of one whole node, by market (None: no price for that market)."""

    ondemand: Optional[float] = None
    spot: Optional[float] = None
    as_of: str = ""
    source: str = ""

    def get(self, market: str) -> Optional[float]:
        if market == "ondemand":
            return self.ondemand
        if market == "spot":
            return self.spot
        return None

    def over(self, base: "Rates") -> "Rates":
        """These rates, with ``base``'s for whatever these leave out."""
        return Rates(
            ondemand=self.ondemand if self.ondemand is not None else base.ondemand,
            spot=self.spot if self.spot is not None else base.spot,
            as_of=self.as_of or base.as_of,
            source=self.source or base.source,
        )


@dataclass(frozen=True)
class NodeTypeEntry:
    """A cluster config's node type: the instance type it launches and/or its own prices, and
    (from a cluster config only) the market its nodes are in."""

    instance_type: str = ""
    rates: Rates = field(default_factory=Rates)
    market: str = ""  # "spot" | "ondemand" | "" (unknown); informative, never used to price

    def over(self, base: "NodeTypeEntry") -> "NodeTypeEntry":
        return NodeTypeEntry(
            instance_type=self.instance_type or base.instance_type,
            rates=self.rates.over(base.rates),
            market=self.market or base.market,
        )


@dataclass(frozen=True)
class PriceTable:
    """A validated price table (see the module docstring for the format and the lookup).

    Build one with :meth:`from_mapping`, :func:`load_prices` or :meth:`from_cluster_config`;
    treat its mappings as read-only."""

    currency: Optional[str] = None
    instance_types: Mapping[str, Rates] = field(default_factory=dict)
    node_types: Mapping[str, NodeTypeEntry] = field(default_factory=dict)
    as_of: str = ""
    source: str = ""
    version: int = PRICES_VERSION

    # ------------------------------------------------------------------ lookup
    def price(self, node_type: str, instance_type: str, market: str) -> Optional[float]:
        """Per-hour price of one whole node of ``node_type`` / ``instance_type`` in ``market``
        (``"spot"`` / ``"ondemand"``), or None when the table has none: ``node_types[node_type]``'s
        own price, else that of the instance type it names, else (only when the table names no
        instance type for ``node_type``) ``instance_types[instance_type]``'s."""
        nt = self.node_types.get(node_type) if node_type else None
        if nt is not None:
            p = nt.rates.get(market)
            if p is not None:
                return p
            if nt.instance_type:
                r = self.instance_types.get(nt.instance_type)
                return r.get(market) if r is not None else None
        r = self.instance_types.get(instance_type) if instance_type else None
        return r.get(market) if r is not None else None

    def ondemand_price(self, node_type: str, instance_type: str) -> Optional[float]:
        """:meth:`price` in the on-demand market."""
        return self.price(node_type, instance_type, "ondemand")

    def instance_type_of(self, node_type: str) -> str:
        """The instance type the table (or the cluster config it was merged with) gives
        ``node_type`` ("" when none)."""
        nt = self.node_types.get(node_type)
        return nt.instance_type if nt is not None else ""

    def market_of(self, node_type: str) -> str:
        """The market a cluster config declares for ``node_type`` ("" when unknown)."""
        nt = self.node_types.get(node_type)
        return nt.market if nt is not None else ""

    @property
    def has_prices(self) -> bool:
        return any(r.ondemand is not None or r.spot is not None for r in self.instance_types.values()) or any(
            e.rates.ondemand is not None or e.rates.spot is not None for e in self.node_types.values()
        )

    # ------------------------------------------------------------------ building
    def merged(self, other: "PriceTable") -> "PriceTable":
        """This table with ``other`` laid over it, field by field: where both name an instance
        type or node type, ``other``'s prices, instance type and market win and this table's
        fill what ``other`` leaves out. Both currencies, when given, must be the same."""
        if self.currency and other.currency and self.currency != other.currency:
            raise ValueError(
                f"prices.currency: cannot merge a {self.currency} table with a {other.currency} table "
                "(one currency per table; convert the prices first)"
            )
        inst = dict(self.instance_types)
        for k, r in other.instance_types.items():
            inst[k] = r.over(inst[k]) if k in inst else r
        nts = dict(self.node_types)
        for k, e in other.node_types.items():
            nts[k] = e.over(nts[k]) if k in nts else e
        return replace(
            self,
            currency=other.currency or self.currency,
            instance_types=inst,
            node_types=nts,
            as_of=other.as_of or self.as_of,
            source=other.source or self.source,
        )

    @classmethod
    def from_mapping(cls, d: Any, where: str = "prices") -> "PriceTable":
        """A table from its dict form (module docstring); ValueError naming the field when ``d``
        is not one."""
        _mapping(d, where, "a mapping with keys " + ", ".join(_TOP_KEYS))
        _known_keys(d, where, _TOP_KEYS)
        if "version" not in d:
            raise ValueError(f"{where}.version: missing (write `version: {PRICES_VERSION}`)")
        v = d["version"]
        if isinstance(v, bool) or not isinstance(v, int) or v != PRICES_VERSION:
            raise ValueError(
                f"{where}.version: expected {PRICES_VERSION} (the price table format this flyte-ray reads), "
                f"got {_show(v)}"
            )
        currency = d.get("currency")
        if currency is not None and (not isinstance(currency, str) or not _CURRENCY.match(currency)):
            raise ValueError(
                f"{where}.currency: expected a currency code of three capital letters (e.g. USD), got {_show(currency)}"
            )
        instance_types: dict[str, Rates] = {}
        raw_it = d.get("instance_types")
        if raw_it is not None:
            _mapping(raw_it, f"{where}.instance_types", "a mapping of instance type -> {ondemand: N, spot: N}")
            for name, entry in raw_it.items():
                path = f"{where}.instance_types.{_name(name, f'{where}.instance_types')}"
                _mapping(entry, path, "a mapping with keys " + ", ".join(_INSTANCE_KEYS))
                _known_keys(entry, path, _INSTANCE_KEYS)
                instance_types[name] = _rates(entry, path)
        node_types: dict[str, NodeTypeEntry] = {}
        raw_nt = d.get("node_types")
        if raw_nt is not None:
            _mapping(
                raw_nt,
                f"{where}.node_types",
                "a mapping of node type -> {instance_type: NAME} or {ondemand: N, spot: N}",
            )
            for name, entry in raw_nt.items():
                path = f"{where}.node_types.{_name(name, f'{where}.node_types')}"
                _mapping(entry, path, "a mapping with keys " + ", ".join(_NODE_TYPE_KEYS))
                _known_keys(entry, path, _NODE_TYPE_KEYS)
                it = entry.get("instance_type", "")
                if "instance_type" in entry:
                    _name(it, f"{path}.instance_type")
                rates = _rates(entry, path)
                if not it and rates.ondemand is None and rates.spot is None:
                    raise ValueError(
                        f"{path}: gives neither an instance_type nor a price "
                        "(write {instance_type: NAME} or {ondemand: N, spot: N})"
                    )
                node_types[name] = NodeTypeEntry(instance_type=it, rates=rates)
        table = cls(
            currency=currency,
            instance_types=instance_types,
            node_types=node_types,
            as_of=_info(d, "as_of", where),
            source=_info(d, "source", where),
        )
        if currency is None and table.has_prices:
            raise ValueError(f"{where}.currency: missing; a table with prices must name its currency (e.g. USD)")
        return table

    @classmethod
    def from_cluster_config(cls, config: Union[str, "os.PathLike[str]", Mapping[str, Any]]) -> "PriceTable":
        """The node types of a ``ray up`` cluster config (a path or its parsed dict), each with the
        instance type it launches and its market; no prices (a config has none).

        Instance type: AWS ``node_config.InstanceType``, GCP ``node_config.machineType`` (the
        last part of a URL), Azure ``node_config.azure_arm_parameters.vmSize``. GCP bills
        ``guestAccelerators`` apart from the machine type, so a GCP node type with accelerators
        gets the instance type ``<machineType>+<count>x<acceleratorType>`` (for instance
        ``n1-standard-8_1xnvidia-tesla-t4``): price that name (the whole node, GPUs included) or
        the node type itself; the machine type's price alone never prices it. Market: spot when
        AWS ``InstanceMarketOptions.MarketType`` is ``spot``, GCP ``scheduling.provisioningModel``
        is ``SPOT`` or ``scheduling.preemptible`` is true, or Azure ``priority`` is ``Spot``;
        else, when the node type declares flyte-ray's market marker (``resources: {spot: ...}``
        or ``{ondemand: ...}``), that; else on-demand when it names an instance type. A node type
        whose instance type cannot be read is kept with its market only."""
        where = "cluster config"
        if isinstance(config, Mapping):
            doc: Any = config
        else:
            where = os.fspath(config)
            with open(config, encoding="utf-8") as f:
                doc = _yaml_load(f.read(), where)
        if not isinstance(doc, Mapping):
            raise ValueError(f"{where}: not a YAML mapping")
        if doc.get("kind") == "RayCluster":
            raise ValueError(
                f"{where}: a KubeRay RayCluster names no instance types (its pods share Kubernetes nodes); "
                "give each group's price under node_types in the price table instead"
            )
        types = doc.get("available_node_types")
        if not isinstance(types, Mapping) or not types:
            raise ValueError(f"{where}: no available_node_types (is this a `ray up` cluster config?)")
        out: dict[str, NodeTypeEntry] = {}
        for name, nt in types.items():
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"{where}: available_node_types: expected node type names (strings), got {_show(name)}"
                )
            nt = nt if isinstance(nt, Mapping) else {}
            nc = nt.get("node_config")
            nc = nc if isinstance(nc, Mapping) else {}
            instance_type, market = _cloud_node(nc)
            if not market:
                res = nt.get("resources")
                res = res if isinstance(res, Mapping) else {}
                if res.get("spot"):
                    market = "spot"
                elif res.get("ondemand") or instance_type:
                    market = "ondemand"
            out[name] = NodeTypeEntry(instance_type=instance_type, market=market)
        return cls(node_types=out, source=f"node types of {where}")


def load_prices(source: PriceSource) -> PriceTable:
    """A :class:`PriceTable` from a YAML/JSON file's path, a dict in the table's format, or a
    table (returned as is). ValueError naming the field (and the file) when it is not one."""
    if isinstance(source, PriceTable):
        return source
    if isinstance(source, Mapping):
        return PriceTable.from_mapping(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        doc = _yaml_load(text, path)
        try:
            return PriceTable.from_mapping(doc)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raise ValueError(
        f"prices: expected a price table, a mapping in its format or a file path, got {type(source).__name__}"
    )


# ---------------------------------------------------------------------------- helpers
def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _mapping(v: Any, path: str, accepted: str) -> None:
    if not isinstance(v, Mapping):
        raise ValueError(f"{path}: expected {accepted}, got {type(v).__name__}")


def _known_keys(d: Mapping[Any, Any], path: str, keys: tuple[str, ...]) -> None:
    for k in d:
        if k not in keys:
            raise ValueError(f"{path}: unknown key {_show(k)} (accepted: {', '.join(keys)})")


def _name(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v or len(v) > _MAX_NAME:
        raise ValueError(
            f"{path}: expected a name (a non-empty string of at most {_MAX_NAME} characters), got {_show(v)}"
            + (" (quote it in YAML)" if isinstance(v, (bool, int, float)) else "")
        )
    return v


def _price(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(
            f"{path}: expected a price: a finite number >= 0 (per hour of one whole node), got {_show(v)}"
            + (" (write it unquoted)" if isinstance(v, str) else "")
        )
    return float(v)


def _info(d: Mapping[str, Any], key: str, path: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if isinstance(v, (datetime.date, datetime.datetime)):  # YAML reads 2025-01-01 as a date
        return v.isoformat()
    if not isinstance(v, str) or len(v) > 1000:
        raise ValueError(f"{path}.{key}: expected a string (or a date for as_of), got {type(v).__name__}")
    return v


def _rates(entry: Mapping[str, Any], path: str) -> Rates:
    return Rates(
        ondemand=_price(entry["ondemand"], f"{path}.ondemand") if entry.get("ondemand") is not None else None,
        spot=_price(entry["spot"], f"{path}.spot") if entry.get("spot") is not None else None,
        as_of=_info(entry, "as_of", path),
        source=_info(entry, "source", path),
    )


def _cloud_node(nc: Mapping[str, Any]) -> tuple[str, str]:
    """(instance type, market) from a node type's ``node_config`` ("" where it does not say)."""
    instance_type = ""
    market = ""
    if isinstance(nc.get("InstanceType"), str):  # AWS
        instance_type = nc["InstanceType"]
        mo = nc.get("InstanceMarketOptions")
        if isinstance(mo, Mapping) and str(mo.get("MarketType", "")).lower() == "spot":
            market = "spot"
    elif isinstance(nc.get("machineType"), str):  # GCP (a name, or a URL ending in it)
        instance_type = nc["machineType"].rstrip("/").rsplit("/", 1)[-1]
        accs = nc.get("guestAccelerators")
        for acc in accs if isinstance(accs, list) else []:
            if isinstance(acc, Mapping) and acc.get("acceleratorType"):
                kind = str(acc["acceleratorType"]).rstrip("/").rsplit("/", 1)[-1]
                instance_type += f"_{acc.get('acceleratorCount', 1)}x{kind}"  # a valid Ray label value (no '+')
        sched = nc.get("scheduling")
        # Ray's own GCP defaults write scheduling as a list of one-key mappings
        parts = sched if isinstance(sched, list) else [sched]
        for s in parts:
            if isinstance(s, Mapping) and (
                str(s.get("provisioningModel", "")).upper() == "SPOT" or s.get("preemptible") is True
            ):
                market = "spot"
    elif isinstance(nc.get("azure_arm_parameters"), Mapping):  # Azure
        arm = nc["azure_arm_parameters"]
        if isinstance(arm.get("vmSize"), str):
            instance_type = arm["vmSize"]
        if str(arm.get("priority", "")).lower() == "spot":
            market = "spot"
    return instance_type, market


def _yaml_load(text: str, where: str) -> Any:
    """YAML (or JSON) text, refusing a key given twice in one mapping."""
    import yaml

    class _Strict(yaml.SafeLoader):
        pass

    def _construct(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *alias`: its keys may be overridden
                continue
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: let SafeLoader report it
                dup = False
            if dup:
                raise ValueError(f"{where}: line {key_node.start_mark.line + 1}: key {_show(key)} given twice")
            try:
                seen.add(key)
            except TypeError:
                pass
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    _Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct)
    try:
        return yaml.load(text, Loader=_Strict)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML: {e}") from None
