"""Outcome labels of calls: the ONE documented place for the label rules.

Labels read outcome fields (answered, ring_s, release_side, disposition, duration_s) of the call
AND of other calls of the same UTC day — things features must never read. They are weak labels
from CDRs alone; their precision/recall against simulator ground truth is measured
(`label_quality_sql`) and shown on every call_labels partition.

A single short unanswered call says little: impatient humans hang up after one ring too, and on
operator_a (Asterisk) nobody can tell who released. What a flash-call campaign cannot hide is its
*behaviour over the day*, so labels are decided per A-number range and day:

* flash_like (one call's outcome): not answered, rang <= `flash_max_ring_s`, dropped by the
  caller (release_side 'caller', or disposition 'cancelled', or — where the source cannot say who
  released — 'no_answer').
* campaign range: an A-number prefix (the A-number without its last k digits, for each k in
  `campaign_levels`: providers rotate 4 to 6 trailing digits) that made >= `campaign_min_calls`
  flash_like calls that day, which are >= `campaign_min_share` of all its calls that day.
  If those calls came from many distinct A-numbers (distinct / flash_like >= `campaign_min_distinct`)
  it is a flash range (OTP providers rotate the A-number); otherwise a wangiri range (a handful of
  fixed bait numbers that want call-backs). A call-centre dialer's range fails the share test.
* bait number: an A-number that made flash_like calls to >= `wangiri_min_b_numbers` distinct
  B-numbers that day.
* burst: a flash_like call on an ingress trunk that carried >= `burst_min_calls` flash_like calls
  from distinct A-numbers within +-`burst_window_s`, at >= `burst_min_ratio` times the trunk's
  flash_like rate over the surrounding 6x wider window (SIM farms use random-looking numbers, so
  only the trunk shows the campaign).

Classes, first match wins:
* wangiri: from a wangiri range or a bait number, except answered calls longer than `max_answered_s`.
* flash: from a flash range (any outcome: busy and failed attempts are part of the campaign),
  except answered calls longer than `max_answered_s` (voice OTPs read out from the same range are
  legitimate); or a burst call.
* callback: a call to an A-number of a flash/wangiri range or bait number that called this call's
  A-number within `callback_window_h` before (a victim calling back, answered or not).
* normal: everything else — including flash_like calls without campaign evidence.

The model's target is label = 'flash'.
"""

from __future__ import annotations

from voicefw_assets.features import KEY_BY_NAME
from voicefw_assets.model_config import LabelConfig

LABELS = ("normal", "flash", "wangiri", "callback")


def flash_like_sql(cfg: LabelConfig) -> str:
    """One call's outcome looks like a flash call (SQL boolean over mapped_cdrs columns)."""
    return f"""(NOT coalesce(answered, false) AND coalesce(ring_s, 1e9) <= {cfg.flash_max_ring_s}
        AND (release_side = 'caller' OR disposition = 'cancelled'
             OR (release_side = 'unknown' AND disposition = 'no_answer')))"""


def call_labels_sql(day: str, cfg: LabelConfig, source: str = "mapped_cdrs") -> str:
    """SELECT operator, call_id, partition_date, start_time, label, flash_like, evidence for the calls of `day`.

    Reads `day` and the day before (call-backs look back `callback_window_h`); range, bait and
    burst evidence is per UTC day."""
    levels = ", ".join(f"({k})" for k in cfg.campaign_levels)
    w = cfg.burst_window_s
    country = KEY_BY_NAME["a_country"].sql("a_number")
    return f"""
WITH c AS (
  SELECT operator, call_id, partition_date, start_time, epoch(start_time) AS t, a_number, b_number, ingress_trunk,
    (coalesce(answered, false) AND coalesce(duration_s, 0) > {cfg.max_answered_s})
      OR coalesce(ring_s, 0) > {cfg.campaign_max_ring_s} AS conversation,
    {flash_like_sql(cfg)} AS flash_like
  FROM {source}
  WHERE partition_date BETWEEN DATE '{day}' - 1 AND DATE '{day}'
),
ck AS (  -- every call once per range level: its A-number without the last k digits
  SELECT c.operator, c.call_id, c.partition_date, c.a_number, c.flash_like, lv.k, c.a_number[1:-(lv.k + 1)] AS rng
  FROM c JOIN (VALUES {levels}) lv(k) ON length(c.a_number) > lv.k + 4
),
ranges AS (  -- evidence over the day and the day before: slow campaigns add up, fixed bait numbers repeat
  SELECT k, rng,
    CASE WHEN count(DISTINCT a_number) FILTER (WHERE flash_like)
              >= {cfg.campaign_min_distinct} * count(*) FILTER (WHERE flash_like) THEN 'flash' ELSE 'wangiri' END AS kind
  FROM ck GROUP BY ALL
  HAVING count(*) FILTER (WHERE flash_like) >= {cfg.campaign_min_calls}
     AND count(*) FILTER (WHERE flash_like) >= {cfg.campaign_min_share} * count(*)
),
camp AS (
  SELECT ck.operator, ck.call_id, bool_or(r.kind = 'flash') AS flash_range, bool_or(r.kind = 'wangiri') AS wangiri_range
  FROM ck JOIN ranges r USING (k, rng) GROUP BY ALL
),
bait AS (
  SELECT a_number FROM c WHERE flash_like AND a_number IS NOT NULL
  GROUP BY ALL HAVING count(DISTINCT b_number) >= {cfg.wangiri_min_b_numbers}
),
fl_g AS (  -- the day's calls, once per group a burst can show in: their trunk, their A-country
  SELECT operator, call_id, t, a_number, flash_like, 'trunk ' || operator || ' ' || ingress_trunk AS grp
  FROM c WHERE ingress_trunk IS NOT NULL AND partition_date = DATE '{day}'
  UNION ALL
  SELECT operator, call_id, t, a_number, flash_like, 'country ' || {country} AS grp
  FROM c WHERE {country} IS NOT NULL AND partition_date = DATE '{day}'
),
fl_w AS (
  SELECT operator, call_id, flash_like,
    count(DISTINCT CASE WHEN flash_like THEN a_number END) OVER near_w AS near,
    sum(flash_like::INTEGER) OVER near_w AS near_fl, count(*) OVER near_w AS near_calls,
    sum(flash_like::INTEGER) OVER (PARTITION BY grp ORDER BY t RANGE BETWEEN {6 * w} PRECEDING AND {6 * w} FOLLOWING) AS wide_fl
  FROM fl_g WINDOW near_w AS (PARTITION BY grp ORDER BY t RANGE BETWEEN {w} PRECEDING AND {w} FOLLOWING)
),
fl AS (  -- a burst: many distinct A-numbers of short unanswered calls within +-w, either at burst_min_ratio x
          -- their rate over the 5x longer time around, or making burst_min_ratio x the day's share of such
          -- calls over all traffic (when bursts follow each other, the time around is no baseline). Only a burst call
          -- whose A-number made no other call in the two days counts (spoofed CLIs never recur; a
          -- subscriber's own short cancel that happens to fall in the burst usually does).
  SELECT fl_w.operator, fl_w.call_id,
    bool_or(near >= {cfg.burst_min_calls} AND (5 * near >= {cfg.burst_min_ratio} * (wide_fl - near_fl)
            OR near_fl >= {cfg.burst_min_ratio} * day.share * near_calls)) AND any_value(a_calls.n) = 1 AS burst
  FROM fl_w JOIN c USING (operator, call_id) JOIN (SELECT a_number, count(*) AS n FROM c GROUP BY ALL) a_calls USING (a_number),
    (SELECT avg(flash_like::INTEGER) AS share FROM c WHERE partition_date = DATE '{day}') day
  WHERE fl_w.flash_like
  GROUP BY ALL
),
lab AS (
  SELECT c.*,
    CASE WHEN (coalesce(camp.wangiri_range, false) OR bait.a_number IS NOT NULL) AND NOT c.conversation THEN 'wangiri'
         WHEN coalesce(camp.flash_range, false) AND NOT c.conversation THEN 'flash'
         WHEN fl.burst THEN 'flash'
         END AS campaign_label,
    CASE WHEN coalesce(camp.flash_range, false) THEN 'flash_range' WHEN coalesce(camp.wangiri_range, false) THEN 'wangiri_range'
         WHEN bait.a_number IS NOT NULL THEN 'bait_number' WHEN fl.burst THEN 'burst' END AS evidence
  FROM c LEFT JOIN camp USING (operator, call_id) LEFT JOIN bait USING (a_number)
    LEFT JOIN fl USING (operator, call_id)
),
cb AS (  -- calls to a campaign A-number that called this caller shortly before
  SELECT DISTINCT x.operator, x.call_id
  FROM lab x JOIN lab y ON y.campaign_label IS NOT NULL AND y.a_number = x.b_number AND y.b_number = x.a_number
    AND y.start_time < x.start_time AND y.start_time >= x.start_time - INTERVAL {cfg.callback_window_h} HOUR
  WHERE x.partition_date = DATE '{day}' AND x.campaign_label IS NULL
)
SELECT lab.operator, lab.call_id, lab.partition_date, lab.start_time,
  CASE WHEN lab.campaign_label IS NOT NULL THEN lab.campaign_label
       WHEN cb.call_id IS NOT NULL THEN 'callback' ELSE 'normal' END AS label,
  lab.flash_like,
  CASE WHEN lab.campaign_label IS NOT NULL THEN lab.evidence WHEN cb.call_id IS NOT NULL THEN 'called_back' END AS evidence
FROM lab LEFT JOIN cb USING (operator, call_id)
WHERE lab.partition_date = DATE '{day}'
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
