"""When things run by themselves: drops -> ingest (the sensor), ingest -> features, labels and
scores (declarative automation), and a daily retrain that promotes only through the model's gates.

The conditions are Dagster's own parts, combined so that:
- any day can update (a late file for last week re-derives last week), not only the latest one
  (`eager()` looks at the latest time window only);
- a day of one operator with no data does not hold the others back (a missing upstream partition
  is not a failed check);
- nothing follows an upstream whose blocking check failed, nor one still running.
"""

import os

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    ScheduleDefinition,
)

UPSTREAM_CHECKS_PASSED = AutomationCondition.all_deps_match(
    AutomationCondition.missing()
    | AutomationCondition.all_checks_match(
        AutomationCondition.check_passed() | AutomationCondition.will_be_requested(), blocking_only=True
    )
).with_label("upstream blocking checks passed (or no data)")

QUIET = ~AutomationCondition.in_progress() & ~AutomationCondition.any_deps_in_progress()

# a day's features/labels follow any operator's mapped_cdrs of that day
FOLLOW_UPSTREAM = (
    AutomationCondition.any_deps_updated().since_last_handled() & QUIET & UPSTREAM_CHECKS_PASSED
).with_label("upstream updated, its checks passed")

# scores need every input: no scores for a day without features, or before a model is promoted
FOLLOW_COMPLETE_UPSTREAM = (FOLLOW_UPSTREAM & ~AutomationCondition.any_deps_missing()).with_label(
    "upstream updated and complete, its checks passed"
)

# the first model is trained once features exist (materialized, not merely requested: the
# training run must see them); later ones by the retrain schedule
FIRST_TRAINING = (
    AutomationCondition.missing()
    & AutomationCondition.any_deps_match(AutomationCondition.newly_updated()).since_last_handled()
    & QUIET
).with_label("no model yet, features arrived")

CONDITIONS = {
    "call_features": FOLLOW_UPSTREAM,
    "call_labels": FOLLOW_UPSTREAM,
    "training_set": FIRST_TRAINING,
    "flash_call_model": FOLLOW_UPSTREAM,
    "serving_model": FOLLOW_UPSTREAM,  # flash_call_model's gates are blocking checks
    "scored_calls": FOLLOW_COMPLETE_UPSTREAM,
    "suspicious_ranges": FOLLOW_COMPLETE_UPSTREAM,
}


def with_automation(spec):
    condition = CONDITIONS.get(spec.key.to_user_string())
    return spec.replace_attributes(automation_condition=condition) if condition else spec


automation_sensor = AutomationConditionSensorDefinition(
    "voicefw_automation",
    target=AssetSelection.assets(*CONDITIONS),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("VOICEFW_AUTOMATION_INTERVAL_S", "30")),
    emit_backfills=False,  # plain runs start at once; backfills wait for the backfill daemon's 30 s loop
    description="Evaluates the automation conditions of features, labels, model and scores.",
)

retrain_schedule = ScheduleDefinition(
    name="retrain_flash_call_model",
    target=AssetSelection.assets("training_set", "flash_call_model", "serving_model"),
    cron_schedule=os.environ.get("VOICEFW_RETRAIN_CRON", "0 3 * * *"),
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Retrains on the latest window; serving_model is promoted only if the blocking gates pass.",
)
