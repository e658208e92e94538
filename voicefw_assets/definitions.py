"""The code location: every asset, check, job, sensor and resource of voicefw."""

from dagster import Definitions

from resources import default_resources
from sensors import cdr_drop_sensor
from voicefw_assets.assets import modeling
from voicefw_assets.assets.ingest import ingest_assets, ingest_job

defs = Definitions(
    assets=[*ingest_assets, *modeling.assets],
    asset_checks=modeling.asset_checks,
    jobs=[ingest_job],
    sensors=[cdr_drop_sensor],
    resources=default_resources(),
)
