"""Outcome labels of calls: the ONE documented place for the label rules.

Labels read outcome fields (answered, ring_s, release_side, disposition) — the things features
must never read. They are weak labels, from the CDR alone:

* flash_like (the outcome pattern): not answered, rang <= `flash_max_ring_s` seconds, and dropped by
  the caller: release_side = 'caller', or disposition = 'cancelled', or — where the source cannot
  say who released (operator_a/Asterisk: release_side is always 'unknown') — disposition
  'no_answer'. So on operator_a every short unanswered call is flash_like: an impatient human
  caller is indistinguishable from a flash call there, which costs precision.
* wangiri: flash_like, and the same A-number made flash_like calls to >= `wangiri_min_b_numbers`
  distinct B-numbers that UTC day (a fixed bait number that wants call-backs; flash-call/OTP
  providers rotate the A-number's last digits instead).
* flash: flash_like and not wangiri.
* callback: answered, and the called number (b_number) made a flash_like call to this call's
  A-number within `callback_window_h` before this call started (a victim calling back).
* normal: everything else (busy and failed calls included).

The model's target is label = 'flash'. Against simulator ground truth the labels' precision and
recall are measured per class (`label_quality_sql`).
"""

from __future__ import annotations

from voicefw_assets.model_config import LabelConfig

LABELS = ("normal", "flash", "wangiri", "callback")


def call_labels_sql(day: str, cfg: LabelConfig, source: str = "mapped_cdrs") -> str:
    """SELECT operator, call_id, partition_date, start_time, label, flash_like for the calls of `day`."""
    flash_like = f"""(NOT coalesce(answered, false) AND coalesce(ring_s, 1e9) <= {cfg.flash_max_ring_s}
        AND (release_side = 'caller' OR disposition = 'cancelled'
             OR (release_side = 'unknown' AND disposition = 'no_answer')))"""
    return f"""
WITH c AS (
  SELECT operator, call_id, partition_date, start_time, a_number, b_number, answered, {flash_like} AS flash_like
  FROM {source}
  WHERE partition_date BETWEEN DATE '{day}' - 1 AND DATE '{day}'
),
bait AS (  -- fixed A-numbers doing flash-like calls to many B-numbers that day
  SELECT a_number FROM c
  WHERE flash_like AND a_number IS NOT NULL AND partition_date = DATE '{day}'
  GROUP BY a_number HAVING count(DISTINCT b_number) >= {cfg.wangiri_min_b_numbers}
),
cb AS (  -- answered calls whose A-number was flash-called by their B-number shortly before
  SELECT DISTINCT x.operator, x.call_id
  FROM c x JOIN c y ON y.flash_like AND y.a_number = x.b_number AND y.b_number = x.a_number
    AND y.start_time < x.start_time AND y.start_time >= x.start_time - INTERVAL {cfg.callback_window_h} HOUR
  WHERE x.partition_date = DATE '{day}' AND x.answered
)
SELECT c.operator, c.call_id, c.partition_date, c.start_time,
  CASE WHEN c.flash_like AND bait.a_number IS NOT NULL THEN 'wangiri'
       WHEN c.flash_like THEN 'flash'
       WHEN cb.call_id IS NOT NULL THEN 'callback'
       ELSE 'normal' END AS label,
  c.flash_like
FROM c LEFT JOIN bait USING (a_number) LEFT JOIN cb USING (operator, call_id)
WHERE c.partition_date = DATE '{day}'
"""


def label_quality_sql(labels_table: str, truth_table: str) -> str:
    """Per (operator, class): label precision and recall against ground truth (truth_table:
    operator, call_id, truth). Calls without truth rows are left out."""
    return f"""
WITH j AS (
  SELECT l.operator, l.label, t.truth FROM {labels_table} l JOIN {truth_table} t USING (operator, call_id)
), cls(c) AS (VALUES {', '.join(f"('{x}')" for x in LABELS)})
SELECT j.operator, cls.c AS class,
  count(*) FILTER (WHERE label = c AND truth = c) AS tp,
  count(*) FILTER (WHERE label = c) AS labelled,
  count(*) FILTER (WHERE truth = c) AS truth,
  round(count(*) FILTER (WHERE label = c AND truth = c) / nullif(count(*) FILTER (WHERE label = c), 0), 4) AS precision,
  round(count(*) FILTER (WHERE label = c AND truth = c) / nullif(count(*) FILTER (WHERE truth = c), 0), 4) AS recall
FROM j CROSS JOIN cls
GROUP BY ALL ORDER BY 1, 2
"""
