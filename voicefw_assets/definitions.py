"""The code location: every asset, check, job, sensor, schedule and resource of voicefw."""

from dagster import Definitions, in_process_executor

from resources import default_resources
from sensors import cdr_drop_sensor
from voicefw_assets.assets import modeling
from voicefw_assets.assets.ingest import ingest_assets, ingest_job
from voicefw_assets.automation import automation_sensor, retrain_schedule, with_automation

defs = Definitions(
    assets=[*ingest_assets, *modeling.assets],
    asset_checks=modeling.asset_checks,
    jobs=[ingest_job],
    sensors=[cdr_drop_sensor, automation_sensor],
    schedules=[retrain_schedule],
    resources=default_resources(),
    # warehouse steps take turns anyway (one DuckDB writer): a process per step only adds start-up time
    executor=in_process_executor,
).map_asset_specs(func=with_automation)
