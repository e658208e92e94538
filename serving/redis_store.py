"""The online history in Redis: every worker and replica reads and updates the same windows.

Layout (all names under one prefix that hashes the feature layout, so changed features start an
empty store), per key of `features.KEYS` and key value `kv` ("<key index>\\0<kv>" = base):
  base s   sorted set of the value's call starts, score = start µs, member = call uid (+ "|a|b"
           when a distinct count of that key needs the numbers)
  base da / db   per counted number, its latest start (distinct counts)
  base xa / xb   per counted number, its starts (one score; members "number NUL time NUL uid", so a
                 number's latest start before t is one ZREVRANGEBYLEX)
  base e / u     ends / short-unanswered ends, score = end µs, member = call uid
  open / openz   calls started and not yet ended (what their end must update), by start time
  due      bases by "oldest entry + the key's horizon (+ TRIM_EVERY_S)": when the newest event time
           passes it, the base is trimmed (emptied sets vanish); a bounded number per request
  wm       the newest event time seen (µs); seeded: the bundle that seeded the store
Integer microseconds are exact in Redis's doubles up to year 2255 (times are limited to 1970-2099).

Everything happens in ONE Lua script per request (EVALSHA; Redis runs it atomically): the rate-limit
token, then per call in order its features from strictly earlier starts ([t - w, t): ZCOUNT with an
exclusive upper bound), ends strictly before t, then its own start. The script is generated from
`features.HISTORY_FEATURES`, so windows and stats are never written here by hand. Each key value is
trimmed to ITS key's largest window (+60 s for late events, as OnlineHistory) behind the newest
event time, in batches (`due`), so a busy 1 h trunk never keeps 24 h.

Distinct counts in [t - w, t): the numbers whose latest start is in the window (one ZCOUNT on
`da`/`db`), plus, for the few numbers with a start at or after t (ties, calls arriving late), one
lookup each of their latest start before t (`xa`/`xb`). Exact in any arrival order, O(log n) per
window when calls arrive about in time order.

A call's uid hashes (operator, call_id, start), so a retried request (after a timeout, say)
re-writes the same members: nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from datetime import datetime
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.history_store import End, RateLimited, RateToken, Start, StoreUnavailable
from serving.schemas import StoreInfo
from voicefw_assets.features import (
    DERIVED_FEATURES,
    DISTINCT_COLUMN,
    FEATURE_NAMES,
    HISTORY_FEATURES,
    KEYS,
    NO_ENDED,
    SETUP_FEATURES,
    SINCE_PREV_CAP_S,
    derive,
    is_short_unanswered,
    key_values,
)
from voicefw_assets.online_features import STATE_FILE, STATE_META, OnlineHistory, to_us

log = logging.getLogger("voicefw.serving")
_US = 1_000_000
LATE_S = 60  # kept beyond a key's largest window for late events (as OnlineHistory)
SEED_CHUNK = 500  # calls per script call while seeding
LOCK_MS = 30_000  # the seeding lock expires if its holder dies
TRIM_EVERY_S = 60  # a key value's expired entries are removed in batches of up to this much event time
DOWN_FOR_S = 1.0  # after Redis is found down, answer 503 at once for this long before trying again
TIMEOUTS_TO_DOWN = 3  # consecutive timeouts that count as down (one slow script is not an outage)
BULK_TIMEOUT_S = 10.0  # batches and seeding: a script over many calls takes longer than one call


def _plan() -> tuple[list[dict], list[tuple[str, int]]]:
    """Per key with features: what to compute, where it goes in the script's output row.

    Output slots (1-based, Lua) follow HISTORY_FEATURES; su_share takes two (su ends, ends)."""
    layout, slots, n = [], [], 0
    for f in HISTORY_FEATURES:
        slots.append((f.stat, n + 1))
        n += 2 if f.stat == "su_share" else 1
    for k, key in enumerate(KEYS):
        feats = [(f, slots[i][1]) for i, f in enumerate(HISTORY_FEATURES) if f.key == key]
        if not feats:
            layout.append(None)
            continue
        distinct = [("a" if DISTINCT_COLUMN[f.stat] == "a_number" else "b", f.window_s * _US, s)
                    for f, s in feats if f.stat in DISTINCT_COLUMN]
        since = [(f.window_s * _US, s) for f, s in feats if f.stat == "since_prev"]
        layout.append({
            "tag": str(k),
            "counts": [(f.window_s * _US, s) for f, s in feats if f.stat == "count"],
            "distinct": distinct,
            "dcols": sorted({d[0] for d in distinct}),
            "dmax": max((d[1] for d in distinct), default=0),
            "since": since[0] if since else None,
            "shares": [(f.window_s * _US, s, s + 1) for f, s in feats if f.stat == "su_share"],
            "horizon": (max(f.window_s for f, _ in feats) + LATE_S) * _US,
        })
    for f in HISTORY_FEATURES:
        if f.stat not in ("count", "since_prev", "su_share", *DISTINCT_COLUMN):
            raise ValueError(f"the Redis store cannot compute {f.stat!r} ({f.name})")
    return layout, slots


PLAN, SLOTS = _plan()
NSLOTS = sum(2 if stat == "su_share" else 1 for stat, _ in SLOTS)
OPEN_HORIZON = max(p["horizon"] for p in PLAN if p)  # calls never ended are forgotten after this


def _lua_value(v) -> str:
    if v is None:
        return "false"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(int(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(_lua_value(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_lua_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


_DEFAULT_ROW = [-1 if stat == "since_prev" else 0 for stat, _ in SLOTS for _ in range(2 if stat == "su_share" else 1)]

LUA = """#!lua
-- generated by serving/redis_store.py from features.HISTORY_FEATURES
local PLAN = %(plan)s
local NK = %(nk)d
local DEFAULT = %(default)s
local OPEN_HORIZON = %(open_horizon)d
local SWEEP_EVERY = 1000000
local TRIM_EVERY = %(trim_every)d  -- a key value is trimmed at most this often (event time): in batches
local P = KEYS[1]
local mode, need_seeded = ARGV[1], ARGV[2]

local Z = string.char(0)
local LEX_OFFSET = 1e12  -- keeps times of the per-value index positive (the earliest accepted is 1969-12-31T10:00Z)
local function fmt(x) return string.format('%%.0f', x) end
-- per-value time index (members of one score, ordered by bytes): value NUL 17-digit time
local function lexkey(v, t) return v .. Z .. string.format('%%017.0f', t + LEX_OFFSET) end

local meta = redis.call('MGET', P .. 'seeded', P .. 'wm')
if need_seeded == '1' and not meta[1] then return {'unseeded'} end
if ARGV[3] ~= '' then  -- rate limit: fixed windows on Redis's clock, shared by every worker
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local win = tonumber(ARGV[5])
  local slot = math.floor(ms / win)
  local rk = P .. 'rate' .. string.char(0) .. ARGV[3] .. string.char(0) .. fmt(slot)
  local n = tonumber(redis.call('GET', rk) or '0')
  if n >= tonumber(ARGV[4]) then return {'limited', math.ceil(((slot + 1) * win - ms) / 1000)} end
  redis.call('INCR', rk)
  if n == 0 then redis.call('PEXPIRE', rk, win * 2) end
end
if mode == 'take' then return {'ok'} end

local wm0 = tonumber(meta[2] or '-1e18')
local wm = wm0

local function features(L, base, t, row)
  local sk = base .. 's'
  local hi = '(' .. fmt(t)
  for _, c in ipairs(L.counts) do row[c[2]] = redis.call('ZCOUNT', sk, fmt(t - c[1]), hi) end
  if L.since then
    local r = redis.call('ZREVRANGEBYSCORE', sk, hi, fmt(t - L.since[1]), 'WITHSCORES', 'LIMIT', 0, 1)
    if r[2] then row[L.since[2]] = t - tonumber(r[2]) end
  end
  if #L.distinct > 0 then
    -- values whose latest start is in [t - w, t) (exact for every value with no start at or after t)
    for _, d in ipairs(L.distinct) do row[d[3]] = redis.call('ZCOUNT', base .. 'd' .. d[1], fmt(t - d[2]), hi) end
    -- values with a start at or after t (ties, calls arriving late): their latest start before t
    local late = redis.call('ZRANGEBYSCORE', sk, fmt(t), '+inf')
    if #late > 0 then
      local prev = {}
      for _, m in ipairs(late) do
        local _, a, b = string.match(m, '^([^|]*)|([^|]*)|(.*)$')
        for _, col in ipairs(L.dcols) do
          local v = (col == 'a') and a or b
          local key = col .. Z .. v
          if v ~= '' and prev[key] == nil then
            local r = redis.call('ZREVRANGEBYLEX', base .. 'x' .. col, '(' .. lexkey(v, t), '[' .. v .. Z, 'LIMIT', 0, 1)
            prev[key] = r[1] and (tonumber(string.sub(r[1], #v + 2, #v + 18)) - LEX_OFFSET) or false
          end
        end
      end
      for key, before in pairs(prev) do
        if before then
          local col = string.sub(key, 1, 1)
          for _, d in ipairs(L.distinct) do
            if d[1] == col and before >= t - d[2] then row[d[3]] = row[d[3]] + 1 end
          end
        end
      end
    end
  end
  for _, s in ipairs(L.shares) do
    local lo = fmt(t - s[1])
    row[s[2]] = redis.call('ZCOUNT', base .. 'u', lo, hi)
    row[s[3]] = redis.call('ZCOUNT', base .. 'e', lo, hi)
  end
end

local function record_start(L, base, t, uid, a, b)
  local ts = fmt(t)
  if #L.distinct > 0 then
    redis.call('ZADD', base .. 's', ts, uid .. '|' .. a .. '|' .. b)
    for _, col in ipairs(L.dcols) do
      local v = (col == 'a') and a or b
      if v ~= '' then
        redis.call('ZADD', base .. 'd' .. col, 'GT', ts, v)
        redis.call('ZADD', base .. 'x' .. col, 0, lexkey(v, t) .. Z .. uid)
      end
    end
  else
    redis.call('ZADD', base .. 's', ts, uid)
  end
  redis.call('ZADD', P .. 'due', 'NX', fmt(t + L.horizon + TRIM_EVERY), base)
end

local function record_end(L, base, te, uid, su)
  local ts = fmt(te)
  redis.call('ZADD', base .. 'e', ts, uid)
  if su == '1' then redis.call('ZADD', base .. 'u', ts, uid) end
  redis.call('ZADD', P .. 'due', 'NX', fmt(te + L.horizon + TRIM_EVERY), base)
end

-- Trim one key value to ITS key's horizon behind the watermark; returns when to trim it next.
local function trim(L, base, wm)
  local cut = '(' .. fmt(wm - L.horizon)
  local sk = base .. 's'
  if #L.distinct > 0 then
    local old = redis.call('ZRANGEBYSCORE', sk, '-inf', cut, 'WITHSCORES')
    for j = 1, #old, 2 do  -- trimmed starts leave the per-number time indexes too
      local u, oa, ob = string.match(old[j], '^([^|]*)|([^|]*)|(.*)$')
      local ot = tonumber(old[j + 1])
      for _, col in ipairs(L.dcols) do
        local v = (col == 'a') and oa or ob
        if v ~= '' then redis.call('ZREM', base .. 'x' .. col, lexkey(v, ot) .. Z .. u) end
      end
    end
    for _, col in ipairs(L.dcols) do redis.call('ZREMRANGEBYSCORE', base .. 'd' .. col, '-inf', cut) end
  end
  redis.call('ZREMRANGEBYSCORE', sk, '-inf', cut)
  redis.call('ZREMRANGEBYSCORE', base .. 'e', '-inf', cut)
  redis.call('ZREMRANGEBYSCORE', base .. 'u', '-inf', cut)
  local oldest = nil
  for _, k in ipairs({sk, base .. 'e'}) do
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if first[2] and (oldest == nil or tonumber(first[2]) < oldest) then oldest = tonumber(first[2]) end
  end
  return oldest  -- nil: nothing left (Redis drops empty sorted sets by itself)
end

local out = {}
if mode == 'score' or mode == 'record' then
  local NF = 5 + NK
  for i = 6, #ARGV, NF do
    local t, uid, ident, a, b = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local row = {}
    for j = 1, #DEFAULT do row[j] = DEFAULT[j] end
    local rec = {t, uid}
    for k = 1, NK do
      local kv = ARGV[i + 4 + k]
      rec[2 + k] = kv
      local L = PLAN[k]
      if L and kv ~= '' then
        local base = P .. L.tag .. string.char(0) .. kv .. string.char(0)
        if mode == 'score' then features(L, base, t, row) end
        record_start(L, base, t, uid, a, b)
      end
    end
    redis.call('HSET', P .. 'open', ident, cmsgpack.pack(rec))
    redis.call('ZADD', P .. 'openz', fmt(t), ident)
    if t > wm then wm = t end
    if mode == 'score' then for j = 1, #row do out[#out + 1] = row[j] end end
  end
elseif mode == 'end' then
  for i = 6, #ARGV, 3 do
    local ident, t_end, su = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local packed = redis.call('HGET', P .. 'open', ident)
    if packed then
      redis.call('HDEL', P .. 'open', ident)
      redis.call('ZREM', P .. 'openz', ident)
      local rec = cmsgpack.unpack(packed)
      local te = math.max(t_end, rec[1])
      for k = 1, NK do
        local L, kv = PLAN[k], rec[2 + k]
        if L and kv ~= '' and #L.shares > 0 then
          record_end(L, P .. L.tag .. string.char(0) .. kv .. string.char(0), te, rec[2], su)
        end
      end
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
    if t_end > wm then wm = t_end end
  end
end

if wm > wm0 then
  redis.call('SET', P .. 'wm', fmt(wm))
end
if math.floor(wm / SWEEP_EVERY) > math.floor(wm0 / SWEEP_EVERY) then  -- at most once per second of event time
  -- forget calls that never ended, and key values whose newest event left their horizon
  local old = redis.call('ZRANGEBYSCORE', P .. 'openz', '-inf', '(' .. fmt(wm - OPEN_HORIZON), 'LIMIT', 0, 200)
  for _, ident in ipairs(old) do
    redis.call('HDEL', P .. 'open', ident)
    redis.call('ZREM', P .. 'openz', ident)
  end
  -- key values whose oldest entry left their horizon: trim them (a bounded number per call)
  local due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', '(' .. fmt(wm), 'LIMIT', 0, 50)
  for _, base in ipairs(due) do
    local L = PLAN[tonumber(string.match(string.sub(base, #P + 1), '^(%%d+)')) + 1]
    local oldest = trim(L, base, wm)
    if oldest then
      redis.call('ZADD', P .. 'due', fmt(oldest + L.horizon + TRIM_EVERY), base)
    else
      redis.call('ZREM', P .. 'due', base)
    end
  end
end
return {'ok', out}
""" % {
    "plan": _lua_value([p or False for p in PLAN]),
    "nk": len(KEYS),
    "default": _lua_value(_DEFAULT_ROW),
    "open_horizon": OPEN_HORIZON,
    "trim_every": TRIM_EVERY_S * _US,
}

LAYOUT_ID = hashlib.sha256(LUA.encode()).hexdigest()[:10]


def _decode(vals: list[int]) -> list[float]:
    """The script's integer slots -> the history features (HISTORY_FEATURES order), as OnlineHistory
    computes them: since_prev = µs / 1e6, su_share = su / ends (int / int)."""
    out = []
    for stat, s in SLOTS:
        v = vals[s - 1]
        if stat == "since_prev":
            out.append(SINCE_PREV_CAP_S if v < 0 else v / 1e6)
        elif stat == "su_share":
            n = vals[s]
            out.append(NO_ENDED if n == 0 else v / n)
        else:
            out.append(v)
    return out


def _uid(operator: str, call_id: str, t: int) -> str:
    return hashlib.blake2b(f"{operator}\0{call_id}\0{t}".encode(), digest_size=8).hexdigest()


class RedisHistoryStore:
    """HistoryStore over one Redis (standalone or a Sentinel-managed primary; not Redis Cluster:
    the script builds key names). Calls block the event loop for one round trip (~0.2 ms on
    loopback), bounded by `timeout_s` (BULK_TIMEOUT_S for batches and seeding). A refused or reset
    connection, or TIMEOUTS_TO_DOWN timeouts in a row, mark Redis down: for DOWN_FOR_S every call
    answers StoreUnavailable at once, so a dead Redis never stalls requests. Nothing is retried: a
    script whose answer was lost may have run (its uids make a client's retry harmless)."""

    kind = "redis"

    def __init__(self, url: str, timeout_s: float = 0.5, prefix: str | None = None) -> None:
        if FEATURE_NAMES != SETUP_FEATURES + tuple(f.name for f in HISTORY_FEATURES) + tuple(d.name for d in DERIVED_FEATURES):
            raise ValueError("the Redis store lays rows out as SETUP_FEATURES + HISTORY_FEATURES + DERIVED_FEATURES; FEATURE_NAMES differs")
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0), health_check_interval=0)
        bulk = redis.Redis.from_url(url, socket_timeout=max(timeout_s, BULK_TIMEOUT_S), socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.prefix = prefix or f"voicefw:{LAYOUT_ID}:"
        self.bulk_script = bulk.register_script(LUA)
        self._timeout_s = timeout_s
        self._request_script = None  # on one dedicated connection (~15 µs less CPU a call than the pool), made on first use
        self._timeouts = 0
        self._last_ok = 0.0  # monotonic time of the last successful call
        self._setup: OnlineHistory | None = None  # computes the setup part of a row (time zones from the bundle)
        self._ready = False
        self._down_until = 0.0
        self._down_reason = ""
        self._state: tuple[Path, str] | None = None
        self.errors = 0  # failed calls (metrics)

    # ---------------------------------------------------------------- calling Redis
    def _run(self, mode: str, payload: list, rate: RateToken | None, need_seeded: bool = True, bulk: bool = False) -> list:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"online store unavailable: {self._down_reason}")
        rate_args = [rate.client, rate.limit, rate.window_s * 1000] if rate else ["", "", ""]
        try:
            script = self.bulk_script if bulk else self._request_script or self._connect()
            reply = script(keys=[self.prefix], args=[mode, "1" if need_seeded else "0", *rate_args, *payload])
            self._timeouts, self._last_ok = 0, time.monotonic()
        except redis.RedisError as exc:
            self.errors += 1
            reason = f"{type(exc).__name__}: {exc} ({self.url_safe})"
            self._timeouts = self._timeouts + 1 if isinstance(exc, redis.TimeoutError) else TIMEOUTS_TO_DOWN
            if self._timeouts >= TIMEOUTS_TO_DOWN:
                self._down_until = time.monotonic() + DOWN_FOR_S
                self._down_reason = reason
            log.warning("online store failed: %s", reason)
            raise StoreUnavailable(f"online store unavailable: {reason}") from None
        status = reply[0]
        if status == b"ok":
            return reply[1] if len(reply) > 1 else []
        if status == b"limited":
            raise RateLimited(int(reply[1]))
        # b"unseeded": Redis came back without its data; seed it again from the bundle we serve
        self._ready = False
        raise StoreUnavailable("online store is empty (Redis restarted without its data?): seeding it from the bundle state")

    def _connect(self):
        client = redis.Redis.from_url(self.url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s,
                                      retry=Retry(NoBackoff(), 0), health_check_interval=0, single_connection_client=True)
        self._request_script = client.register_script(LUA)
        return self._request_script

    @property
    def url_safe(self) -> str:
        kw = self.client.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}?db={kw.get('db', 0)}"
        return f"redis://{kw.get('host', '?')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    # ---------------------------------------------------------------- HistoryStore
    def score_starts(self, calls: list[Start], rate: RateToken | None) -> list[list]:
        payload = []
        for operator, call_id, start, a, b, trunk in calls:
            t = to_us(start)
            payload += [t, _uid(operator, call_id, t), f"{operator}\0{call_id}", a or "", b or "",
                        *(kv or "" for kv in key_values(a, b, trunk))]
        vals = self._run("score", payload, rate, bulk=len(calls) > 1)
        setup = self._setup.setup_row
        rows = []
        for i, c in enumerate(calls):
            row = setup(c[0], c[2], c[3], c[4]) + _decode(vals[i * NSLOTS:(i + 1) * NSLOTS])
            row += derive(row)  # the derived features, from the same expression tree as the batch SQL
            rows.append(row)
        return rows

    def observe_end(self, end: End, rate: RateToken | None) -> bool:
        operator, call_id, end_time, answered, ring_s = end
        su = "1" if is_short_unanswered(answered, ring_s) else "0"
        return self._run("end", [f"{operator}\0{call_id}", to_us(end_time), su], rate) == [1]

    def take(self, rate: RateToken) -> None:
        self._run("take", [], rate, need_seeded=False)

    def ready(self) -> bool:
        return self._ready

    def health(self) -> str | None:
        """For /readyz and metrics: pings Redis when this process has not talked to it for a second."""
        now = time.monotonic()
        if now >= self._down_until and now - self._last_ok > 1.0:
            try:
                self.client.ping()
                self._last_ok = now
            except redis.RedisError as exc:
                self._down_until, self._down_reason = now + DOWN_FOR_S, f"{type(exc).__name__}: {exc} ({self.url_safe})"
        if time.monotonic() < self._down_until:
            return f"online store unavailable: {self._down_reason}"
        if not self._ready:
            return "online store not seeded yet"
        return None

    def info(self) -> StoreInfo:
        seeded = self._seeded_marker()
        return StoreInfo("redis", self.url_safe, seeded.get("version"), seeded.get("at"))

    def close(self) -> None:
        self.client.close()
        self.bulk_script.registered_client.close()
        if self._request_script is not None:
            self._request_script.registered_client.close()

    # ---------------------------------------------------------------- seeding
    def _seeded_marker(self) -> dict:
        if time.monotonic() < self._down_until:
            return {}
        try:
            raw = self.client.get(self.prefix + "seeded")
        except redis.RedisError:
            return {}
        return json.loads(raw) if raw else {}

    def prepare(self, state_dir: Path, version: str) -> None:
        """Seed the store from the bundle's state unless it already holds history (a restart, or
        another worker or replica seeded it). The first to take the lock seeds; the others wait
        for the `seeded` marker. A seeder that dies leaves its lock to expire; the next one
        re-writes the same members (uids), so a partial seed is completed, never doubled."""
        state_dir = Path(state_dir)
        meta = json.loads((state_dir / STATE_META).read_text())
        self._setup = OnlineHistory(meta["timezones"])
        self._state = (state_dir, version)
        client, lock = self.client, self.prefix + "seeding"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if client.exists(self.prefix + "seeded"):
                self._ready = True
                return
            if client.set(lock, token, nx=True, px=LOCK_MS):
                try:
                    n = self._seed(state_dir, lock)
                    client.set(self.prefix + "seeded", json.dumps(
                        {"version": version, "at": datetime.now().astimezone().isoformat(), "calls": n}))
                    client.incr(self.prefix + "seed_count")
                    log.info("seeded the online store %s from bundle %s (%d calls)", self.url_safe, version, n)
                finally:
                    if client.get(lock) == token.encode():
                        client.delete(lock)
                self._ready = True
                return
            time.sleep(0.2)
        raise StoreUnavailable("timed out waiting for another process to seed the online store")

    def reseed(self) -> None:
        """After Redis lost its data: seed again from the bundle state we were prepared with."""
        if self._state is not None:
            self._down_until = 0.0
            self.prepare(*self._state)

    def _seed(self, state_dir: Path, lock: str) -> int:
        import csv

        with (state_dir / STATE_FILE).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: int(r["start_us"]))
        for i in range(0, len(rows), SEED_CHUNK):
            payload = []
            for r in rows[i:i + SEED_CHUNK]:
                t, a, b, trunk = int(r["start_us"]), r["a_number"] or None, r["b_number"] or None, r["ingress_trunk"] or None
                payload += [t, _uid(r["operator"], r["call_id"], t), f"{r['operator']}\0{r['call_id']}", a or "", b or "",
                            *(kv or "" for kv in key_values(a, b, trunk))]
            self._run("record", payload, None, need_seeded=False, bulk=True)
            self.client.pexpire(lock, LOCK_MS)
        ended = sorted((r for r in rows if r["end_us"]), key=lambda r: int(r["end_us"]))
        for i in range(0, len(ended), SEED_CHUNK):
            payload = []
            for r in ended[i:i + SEED_CHUNK]:
                ring = float(r["ring_s"]) if r["ring_s"] not in ("", None) else None
                su = is_short_unanswered(r["answered"].lower() == "true", ring)
                payload += [f"{r['operator']}\0{r['call_id']}", int(r["end_us"]), "1" if su else "0"]
            self._run("end", payload, None, need_seeded=False, bulk=True)
            self.client.pexpire(lock, LOCK_MS)
        return len(rows)
