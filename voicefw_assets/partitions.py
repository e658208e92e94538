"""Partitions: operator x UTC day for CDR tables, UTC day for everything across operators.

Both dimensions are dynamic partitions definitions: an operator and a day exist once a landed file
brings a call of that operator on that day (`cdr_drop_sensor` and `voicefw materialize` add them
before they launch runs). So the UI's partition axes are the data's operators and days, full when
everything is materialized, instead of a calendar from a fixed start date to today ("9 / 996" for
three days of data) times every configured operator, including those that never sent a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

from voicefw_assets.operators import operator_configs

cdr_days = DynamicPartitionsDefinition(name="cdr_days")
cdr_operators = DynamicPartitionsDefinition(name="cdr_operators")
daily_partitions = cdr_days  # features, labels, scores: one partition per day with landed data
cdr_partitions = MultiPartitionsDefinition({"operator": cdr_operators, "date": cdr_days})
# operators whose configs this code location loaded: a config added later waits for a reload
LOADED_OPERATORS = frozenset(operator_configs())


def operator_day(operator: str, day: date | str) -> MultiPartitionKey:
    return MultiPartitionKey({"operator": operator, "date": str(day)})


def split_operator_day(key: str | MultiPartitionKey) -> tuple[str, date]:
    dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else dict(zip(("date", "operator"), key.split("|")))
    return dims["operator"], date.fromisoformat(dims["date"])


def missing(instance: DagsterInstance, pdef: DynamicPartitionsDefinition, keys: Iterable) -> list[str]:
    """Keys not yet in a dynamic partitions definition, sorted (the UI lists them in insertion order)."""
    return sorted({str(k) for k in keys} - set(instance.get_dynamic_partitions(pdef.name)))


def add_data_partitions(instance: DagsterInstance, operators: Iterable[str] = (), days: Iterable[date | str] = ()) -> None:
    """Register the operators and days of landed data as partitions (what the sensor does in its tick)."""
    for pdef, keys in ((cdr_operators, operators), (cdr_days, days)):
        new = missing(instance, pdef, keys)
        if new:
            instance.add_dynamic_partitions(pdef.name, new)


def consecutive(items: list[str], order: list[str]) -> list[list[str]]:
    """Split items into runs that are consecutive in `order`."""
    pos = {k: i for i, k in enumerate(order)}
    out: list[list[str]] = []
    for item in sorted(items, key=pos.__getitem__):
        if out and pos[item] == pos[out[-1][-1]] + 1:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def rectangles(cells: set[tuple[str, str]], operator_order: list[str], day_order: list[str]) -> list[tuple[list[str], list[str]]]:
    """Cover exactly these (operator, day) cells with few operator x day rectangles, each a range
    of a multi-partitions definition (a range is the product of the two dimensions' ranges, in
    their key order): operators with the same days share one. Three operators with the same days
    make one rectangle, so a backfill of them is one run."""
    days_of: dict[str, set[str]] = {}
    for op, day in cells:
        days_of.setdefault(op, set()).add(day)
    groups: dict[frozenset[str], list[str]] = {}
    for op in operator_order:
        if op in days_of:
            groups.setdefault(frozenset(days_of[op]), []).append(op)
    return [
        (ops, days)
        for day_set, group in groups.items()
        for ops in consecutive(group, operator_order)
        for days in consecutive(list(day_set), day_order)
    ]


def range_tags(operators: list[str], days: list[str]) -> dict[str, str]:
    """Run tags of a partition-range run over an operator x day rectangle (Dagster's documented
    `dagster/asset_partition_range_*` tags, what a UI backfill of a single-run asset sets)."""
    return {
        "dagster/asset_partition_range_start": str(operator_day(operators[0], days[0])),
        "dagster/asset_partition_range_end": str(operator_day(operators[-1], days[-1])),
    }
