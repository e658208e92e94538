"""Dagster resources: the warehouse (DuckDB), the landing zone and the model store.

Every path defaults to $VOICEFW_HOME, so one environment variable moves a whole deployment
(local ./data, a docker volume, a test's tmp dir).
"""

from resources.landing import LandingZone
from resources.model_store import ModelStore
from resources.warehouse import Warehouse


def default_resources() -> dict:
    return {"warehouse": Warehouse(), "landing": LandingZone(), "model_store": ModelStore()}
