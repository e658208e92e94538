"""Per-operator landing feeds, so a feed that stops is noticed.

`landing/<operator>` is an external asset: the files an operator drops. The drop sensor (and
`voicefw materialize`) observe it with the arrival time of the newest file as
`dagster/last_updated_timestamp`, and re-observe a silent feed now and then, so Dagster's
last-update freshness check on it reads "overdue" with that time once no file has come for
VOICEFW_FEED_MAX_SILENCE_H hours (default 2). The checks are evaluated by Dagster's freshness
sensor (`feed_freshness_sensor`); a `landing/<operator>` freshness check in warning is what a team
hooks an alert on (docs/operations.md).
"""

import os
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetKey,
    AssetObservation,
    AssetSelection,
    AssetSpec,
    DefaultSensorStatus,
    MetadataValue,
    build_last_update_freshness_checks,
    build_sensor_for_freshness_checks,
    define_asset_job,
)

from voicefw_assets.operators import operator_configs

GROUP = "landing"


def max_silence() -> timedelta:
    return timedelta(hours=float(os.environ.get("VOICEFW_FEED_MAX_SILENCE_H", "2")))


def feed_key(operator: str) -> AssetKey:
    return AssetKey(["landing", operator])


def feed_observation(operator: str, newest_name: str, newest_arrival_ns: int, files: int) -> AssetObservation:
    """What a look at landing/<operator>/ found: its newest file and when that file arrived."""
    at = datetime.fromtimestamp(newest_arrival_ns / 1e9, tz=timezone.utc)
    return AssetObservation(
        feed_key(operator),
        metadata={
            "dagster/last_updated_timestamp": MetadataValue.timestamp(at),
            "last_file": newest_name,
            "last_file_arrived": at.isoformat(timespec="seconds"),
            "files_in_landing": files,
        },
    )


feed_specs = [
    AssetSpec(
        feed_key(op),
        group_name=GROUP,
        kinds={"file"},
        description=f"Files {op} drops into $VOICEFW_HOME/landing/{op}/ (observed by cdr_drop_sensor: newest file and its arrival time).",
    )
    for op in sorted(operator_configs())
]

# severity WARN (Dagster's default for freshness): an overdue feed, or a configured operator that never
# sent a file, is a warning on its feed, not a failed run of whatever evaluated it
feed_freshness_checks = build_last_update_freshness_checks(assets=[s.key for s in feed_specs], lower_bound_delta=max_silence())

feed_freshness_sensor = build_sensor_for_freshness_checks(
    freshness_checks=feed_freshness_checks,
    minimum_interval_seconds=int(os.environ.get("VOICEFW_FEED_CHECK_INTERVAL_S", "900")),
    name="feed_freshness_sensor",
    default_status=DefaultSensorStatus.RUNNING,
)

# the drop sensor runs this when files come back to a feed whose freshness check last failed
# (Dagster's freshness sensor leaves a failed check alone until something re-runs it)
feed_check_job = define_asset_job(
    "check_feed_freshness",
    selection=AssetSelection.checks(*feed_freshness_checks),
    description="Evaluate the landing feeds' freshness checks.",
)
