"""How runs log to a terminal.

- Runs the daemon or the UI starts log INFO and above to the `voicefw up` console (Dagster's own
  console logger defaults to DEBUG: every step event). Every event is still stored in the run's
  event log and shown in the UI.
- `voicefw materialize` prints its own one-line summary per run (voicefw_assets/launch.py); its
  runs print only the warnings the code logs (quarantined files, empty days), one line each.
  Failures are summed up by the CLI from the run's events, so no stack trace of an expected failure
  (a blocking check that did not pass) scrolls past.
"""

import logging
import sys

from dagster import Field, colored_console_logger, logger

info_console_logger = colored_console_logger.configured({"log_level": "INFO", "name": "dagster"})


class _OneLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("dagster_event") is not None or record.levelno >= logging.ERROR:
            return  # Dagster's events and errors: the CLI sums those up from the run's result
        message = str(meta.get("orig_message", record.getMessage())).strip().splitlines()
        step = meta.get("step_key") or meta.get("job_name") or ""
        print(f"    {record.levelname.lower()}: {step}: {message[0] if message else ''}", file=sys.stderr, flush=True)


@logger(
    config_schema={"log_level": Field(str, default_value="WARNING", description="lowest level printed")},
    description="One line per message the code logs (its first line); Dagster's events are left to the caller's summary.",
)
def terse_console_logger(init_context) -> logging.Logger:
    log = logging.getLogger("voicefw.run")
    log.setLevel(init_context.logger_config["log_level"].upper())
    log.propagate = False
    if not log.handlers:
        log.addHandler(_OneLine())
    return log
