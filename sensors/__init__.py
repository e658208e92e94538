"""Sensors: the landing-zone watcher that turns dropped CDR files into ingest runs."""

from sensors.cdr_drop import build_cdr_drop_sensor, cdr_drop_sensor

__all__ = ["build_cdr_drop_sensor", "cdr_drop_sensor"]
