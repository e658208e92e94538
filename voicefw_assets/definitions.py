"""The code location: every asset, check, job, sensor, schedule and resource of voicefw."""

from voicefw_assets.instance import quiet_dagster_warnings

quiet_dagster_warnings()  # first: the asset modules below raise them at import

from dagster import Definitions, in_process_executor  # noqa: E402

from resources import default_resources  # noqa: E402
from sensors import cdr_drop_sensor  # noqa: E402
from voicefw_assets.assets import modeling  # noqa: E402
from voicefw_assets.assets.feeds import feed_check_job, feed_freshness_checks, feed_freshness_sensor, feed_specs  # noqa: E402
from voicefw_assets.assets.ingest import ingest_assets, ingest_job  # noqa: E402
from voicefw_assets.automation import automation_sensor, retrain_schedule, with_automation  # noqa: E402
from voicefw_assets.run_logs import info_console_logger  # noqa: E402

defs = Definitions(
    assets=[*feed_specs, *ingest_assets, *modeling.assets],
    asset_checks=[*modeling.asset_checks, *feed_freshness_checks],
    jobs=[ingest_job, feed_check_job],
    sensors=[cdr_drop_sensor, automation_sensor, feed_freshness_sensor],
    schedules=[retrain_schedule],
    resources=default_resources(),
    loggers={"console": info_console_logger},
    # warehouse steps take turns anyway (one DuckDB writer): a process per step only adds start-up time
    executor=in_process_executor,
).map_asset_specs(func=with_automation)
