"""Partitions: operator x UTC day for CDR tables, UTC day for everything across operators."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition, MultiPartitionsDefinition, StaticPartitionsDefinition

from voicefw_assets.operators import operator_configs
from voicefw_assets.settings import first_partition_date

# end_offset=1: today's (incomplete) day is a partition too, so drops are processed as they land.
daily_partitions = DailyPartitionsDefinition(start_date=first_partition_date(), timezone="UTC", end_offset=1)
operator_partitions = StaticPartitionsDefinition(sorted(operator_configs()))
cdr_partitions = MultiPartitionsDefinition({"operator": operator_partitions, "date": daily_partitions})
