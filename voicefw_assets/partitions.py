"""Partitions: operator x UTC day for CDR tables, UTC day for everything across operators.

The days are a dynamic partitions definition: a day exists once a landed file has a call on it
(`cdr_drop_sensor` and `voicefw materialize` add it before they launch runs), so the UI shows the
data's days as the partition axis, full when everything is materialized, instead of a calendar
from a fixed start date to today in which three days of data are "9 / 996".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition

from voicefw_assets.operators import operator_configs

cdr_days = DynamicPartitionsDefinition(name="cdr_days")
daily_partitions = cdr_days  # features, labels, scores: one partition per day with landed data
operator_partitions = StaticPartitionsDefinition(sorted(operator_configs()))
cdr_partitions = MultiPartitionsDefinition({"operator": operator_partitions, "date": cdr_days})


def operator_day(operator: str, day: date | str) -> MultiPartitionKey:
    return MultiPartitionKey({"operator": operator, "date": str(day)})


def split_operator_day(key: str | MultiPartitionKey) -> tuple[str, date]:
    dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else dict(zip(("date", "operator"), key.split("|")))
    return dims["operator"], date.fromisoformat(dims["date"])


def missing_days(instance: DagsterInstance, days: Iterable[date]) -> list[str]:
    """Days not yet in `cdr_days`, sorted (the UI lists dynamic partitions in insertion order)."""
    known = set(instance.get_dynamic_partitions(cdr_days.name))
    return sorted({str(d) for d in days} - known)


def add_days(instance: DagsterInstance, days: Iterable[date]) -> list[str]:
    """Register the days of landed data as partitions; returns the ones that were new."""
    new = missing_days(instance, days)
    if new:
        instance.add_dynamic_partitions(cdr_days.name, new)
    return new


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
