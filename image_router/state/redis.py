"""The state store for gateway replicas on several machines: a Redis that never evicts.

A Redis run as a cache (``allkeys-lru``, ``volatile-*``) may drop a live rollout's state
or a tenant's daily count under memory pressure, so the store refuses any
``maxmemory-policy`` but ``noeviction`` — at start and at every reload (:meth:`verify`,
synchronous, for the reload path) and before its first call when the server was not
reachable then (:meth:`check`). A Redis that disables ``CONFIG`` (a managed one) is
used only on the operator's word (``assume_noeviction: true``), with a warning. A server
without persistence is allowed, with a warning: a restart loses the state.

The scripts are registered once (``SCRIPT LOAD`` on first use, then ``EVALSHA``; a
restarted server gets them again), not sent with every call.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import redis as syncredis
import redis.asyncio as aioredis

from image_router.errors import StateStoreError
from image_router.state.base import Committed
from image_router.state.gcra import DAY_KEY_TTL_S
from image_router.state.spend import PURGE_AT_MOST
from image_router.state.txn import Txn

__all__ = ["RedisState", "judge_config"]

log = logging.getLogger("router.state")
VERIFY_TIMEOUT_S = 1.0  # the reload path waits this long at most for a Redis that does not answer
_SETTINGS = ("maxmemory-policy", "save", "appendonly")

_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""
# image_router.state.txn.Txn in one step. ARGV[1]: the shape as JSON, naming values by their
# place in ARGV (0: absent), so values stay bytes; scores as strings (no float rounding).
_COMMIT = """
local s = cjson.decode(ARGV[1])
for _, e in ipairs(s.e) do
  local v = redis.call('GET', e[1])
  if e[2] == 0 then if v then return 0 end elseif v ~= ARGV[e[2]] then return 0 end
end
for _, r in ipairs(s.r) do
  local n = redis.call('ZCARD', r[1])
  local seen = {}
  for _, a in ipairs(s.a) do
    if a[1] == r[1] and not seen[a[2]] and not redis.call('ZSCORE', a[1], a[2]) then n = n + 1 end
    seen[a[2]] = true
  end
  if n > r[2] then return 2 end
end
for _, p in ipairs(s.p) do
  if p[3] > 0 then redis.call('SET', p[1], ARGV[p[2]], 'PX', p[3]) else redis.call('SET', p[1], ARGV[p[2]]) end
end
for _, k in ipairs(s.d) do redis.call('DEL', k) end
for _, a in ipairs(s.a) do redis.call('ZADD', a[1], a[3], a[2]) end
for _, x in ipairs(s.x) do redis.call('ZREM', x[1], x[2]) end
return 1
"""
_COMMITTED: dict[int, Committed] = {1: "ok", 0: "changed", 2: "full"}
INDEX_PREFIX = "ix:"  # indexes are sorted sets under their own prefix: a key never meets one

# image_router.state.gcra.step, line for line, on Redis's own clock (no skew between replicas);
# ARGV[5], when given, is "now" in µs instead (the parity test drives a fixed clock).
_LIMIT = f"""
local now
if ARGV[5] and tonumber(ARGV[5]) > 0 then now = tonumber(ARGV[5]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local images, per_day = tonumber(ARGV[3]), tonumber(ARGV[4])
local new_tat = now
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  new_tat = tat + interval
  if new_tat - now > tolerance then return {{0, 1, tat - now, 0}} end
end
local used = 0
if per_day >= 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + images > per_day then return {{0, 2, new_tat - now, used}} end
  used = redis.call('INCRBY', KEYS[2], images)
  redis.call('EXPIRE', KEYS[2], {DAY_KEY_TTL_S})
end
if interval > 0 then
  -- an arrival time behind now reads like none: the ttl only frees memory (a minute at least)
  local px = math.max(60000, math.ceil((tolerance + interval) / 1000))
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', px)
end
return {{1, 0, new_tat - now, used}}
"""


# image_router.state.spend, line for line, on Redis's own clock (ms). Window hashes hold
# {spent, reserved}; a reservation is a string "tier|amount|window keys"; the index a
# sorted set by expiry (ms).
_PURGE = f"""
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, {PURGE_AT_MOST})
for _, member in ipairs(due) do
  local raw = redis.call('GET', member)
  if raw then
    local parts = {{}}
    for part in string.gmatch(raw, '[^|]+') do parts[#parts + 1] = part end
    for j = 3, #parts do redis.call('HINCRBY', parts[j], 'reserved', -tonumber(parts[2])) end
  end
  redis.call('DEL', member)
  redis.call('ZREM', KEYS[1], member)
end
"""
_RESERVE = (
    _PURGE
    + """
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local avail = {}
for w = 1, n do
  local spent = tonumber(redis.call('HGET', KEYS[2 + w], 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', KEYS[2 + w], 'reserved') or '0')
  avail[w] = tonumber(ARGV[2 + w]) - spent - reserved
end
local held = redis.call('GET', KEYS[2])
if held then
  local parts = {}
  for part in string.gmatch(held, '[^|]+') do parts[#parts + 1] = part end
  local reply = {tonumber(parts[1]), tonumber(parts[2])}
  for w = 1, n do reply[2 + w] = avail[w] end
  return reply
end
local quotes = {}
for q = 3 + 2 * n, #ARGV do quotes[#quotes + 1] = tonumber(ARGV[q]) end
for i = 1, #quotes do
  local amount = quotes[i]
  for j = i, #quotes do if quotes[j] > amount then amount = quotes[j] end end
  local fits = true
  for w = 1, n do if amount > avail[w] then fits = false end end
  if fits then
    local text = string.format('%d|%d', i - 1, amount)
    for w = 1, n do text = text .. '|' .. KEYS[2 + w] end
    redis.call('SET', KEYS[2], text)
    redis.call('ZADD', KEYS[1], now + ttl, KEYS[2])
    local reply = {i - 1, amount}
    for w = 1, n do
      redis.call('HINCRBY', KEYS[2 + w], 'reserved', amount)
      redis.call('HINCRBY', KEYS[2 + w], 'spent', 0)
      redis.call('EXPIRE', KEYS[2 + w], ARGV[2 + n + w])
      reply[2 + w] = avail[w] - amount
    end
    return reply
  end
end
local reply = {-1, 0}
for w = 1, n do reply[2 + w] = avail[w] end
return reply
"""
)
_SETTLE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local held = redis.call('GET', KEYS[2])
if held then
  local parts = {}
  for part in string.gmatch(held, '[^|]+') do parts[#parts + 1] = part end
  for j = 3, #parts do redis.call('HINCRBY', parts[j], 'reserved', -tonumber(parts[2])) end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], KEYS[2])
end
for w = 4, #KEYS do
  redis.call('HINCRBY', KEYS[w], 'spent', tonumber(ARGV[1]))
  redis.call('HINCRBY', KEYS[w], 'reserved', 0)
  redis.call('EXPIRE', KEYS[w], ARGV[w - 1])
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 1
"""


def _ms(ttl_s: float | None) -> int:
    return 0 if ttl_s is None else max(1, int(ttl_s * 1000))


def _bound(score: float) -> str:
    return "-inf" if score == float("-inf") else "+inf" if score == float("inf") else repr(score)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def judge_config(where: str, config: dict[str, str] | None, assume_noeviction: bool) -> tuple[str | None, list[str]]:
    """What the server's ``CONFIG GET`` answers mean for state (pure): the reason to
    refuse it (``None``: usable) and what to warn about. ``config=None``: CONFIG is
    disabled."""
    if config is None:
        if not assume_noeviction:
            return (
                f"state.store: cannot read the eviction policy of the Redis at {where} (CONFIG is disabled); "
                "state needs maxmemory-policy noeviction: if this Redis is set so, say it with "
                "state: {assume_noeviction: true}",
                [],
            )
        return None, [f"state store: the Redis at {where} hides CONFIG: trusting assume_noeviction: true"]
    policy = config.get("maxmemory-policy", "")
    if policy != "noeviction":
        return (
            f"state.store: the Redis at {where} has maxmemory-policy {policy or '(unknown)'}, which may evict "
            "keys (a rollout's state, a tenant's daily count); state needs maxmemory-policy noeviction: set it "
            "in redis.conf (or CONFIG SET maxmemory-policy noeviction), or give state a Redis of its own",
            [],
        )
    if not config.get("save") and config.get("appendonly", "no") == "no":
        return None, [
            f"state store: the Redis at {where} has no persistence (save '' and appendonly no): a restart "
            "loses rollouts' state and tenants' counts; set appendonly yes"
        ]
    return None, []


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client for ``url``, as both Redis stores (state and cache) make it: the guard
    bounds each call; the socket timeouts only stop a dead server from holding a
    connection forever."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=max(1.0, timeout_s * 10),
        socket_connect_timeout=max(0.5, timeout_s * 10),
        health_check_interval=10,
        max_connections=256,
    )


class RedisState:
    kind = "redis"
    shared = True  # by every replica using the server

    def __init__(self, url: str, timeout_s: float, assume_noeviction: bool = False) -> None:
        self.url = url
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
        self.assume_noeviction = assume_noeviction
        self.checked = False  # the eviction policy has been seen to be safe
        self._warned = False  # what is only a risk is said once per store
        self._redis = connect(url, timeout_s)
        self._lease = self._redis.register_script(_LEASE)
        self._release = self._redis.register_script(_RELEASE)
        self._swap = self._redis.register_script(_SWAP)
        self._limit = self._redis.register_script(_LIMIT)
        self._commit = self._redis.register_script(_COMMIT)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    # -- can it be trusted? --------------------------------------------------------------

    def _judged(self, config: dict[str, str] | None) -> None:
        problem, warnings = judge_config(self.where, config, self.assume_noeviction)
        if problem is not None:
            raise StateStoreError(problem, store=self.where)
        if not self._warned:
            for warning in warnings:
                log.warning("%s", warning)
        self.checked = self._warned = True

    @staticmethod
    def _config(answers: list[dict[Any, Any]]) -> dict[str, str]:
        return {_text(k): _text(v) for answer in answers for k, v in answer.items()}

    def verify(self) -> None:
        """:meth:`check`, synchronously (start and reload are not coroutines; one round
        trip, bounded by :data:`VERIFY_TIMEOUT_S`). A server that does not answer now is
        checked before its first use."""
        client = syncredis.Redis.from_url(
            self.url, socket_timeout=VERIFY_TIMEOUT_S, socket_connect_timeout=VERIFY_TIMEOUT_S
        )
        try:
            pipe = client.pipeline(transaction=False)  # one round trip
            for name in _SETTINGS:
                pipe.config_get(name)
            answers = pipe.execute()
        except syncredis.ResponseError:
            return self._judged(None)
        except (syncredis.ConnectionError, syncredis.TimeoutError) as exc:
            log.warning("state store: the Redis at %s does not answer (%s): checked before its first use",
                        self.where, exc)  # fmt: skip
            self.checked = False
            return None
        finally:
            client.close()
        return self._judged(self._config(answers))

    async def check(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in _SETTINGS:
                    pipe.config_get(name)
                answers = await pipe.execute()
        except syncredis.ResponseError:
            return self._judged(None)
        return self._judged(self._config(answers))

    async def _ready(self) -> None:
        if not self.checked:
            await self.check()

    # -- the operations ---------------------------------------------------------------------

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        await self._ready()
        values = [await self._redis.get(keys[0])] if len(keys) == 1 else await self._redis.mget(keys)
        return [v if isinstance(v, bytes) else None for v in values]  # decode_responses is off

    async def swap(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None) -> bool:
        await self._ready()
        if expected is None:
            return bool(await self._redis.set(key, value, nx=True, px=_ms(ttl_s) or None))
        return bool(await self._swap(keys=[key], args=[expected, value, _ms(ttl_s)]))

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        await self._ready()
        return bool(await self._lease(keys=[key], args=[owner, _ms(ttl_s)]))

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=[key], args=[owner])

    async def add_counts(self, key: str, counts: dict[str, int], ttl_s: float | None) -> None:
        await self._ready()
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, n in counts.items():
                pipe.hincrby(key, name, n)
            if ttl_s is not None:
                pipe.pexpire(key, _ms(ttl_s))
            await pipe.execute()

    async def counts(self, key: str) -> dict[str, int]:
        await self._ready()
        values = await self._redis.hgetall(key)
        return {_text(k): int(v) for k, v in values.items()}

    async def limit(self, keys: list[str], args: list[int]) -> list[int]:
        await self._ready()
        reply = await self._limit(keys=keys, args=args)
        return [int(v) for v in reply]

    async def reserve(self, keys: list[str], args: list[int]) -> list[int]:
        """See :mod:`image_router.state.spend`; on Redis's clock."""
        await self._ready()
        reply = await self._reserve(keys=keys, args=args)
        return [int(v) for v in reply]

    async def settle(self, keys: list[str], args: list[int]) -> int:
        await self._ready()
        return int(await self._settle(keys=keys, args=args))

    async def commit(self, txn: Txn) -> Committed:
        await self._ready()
        values: list[bytes] = []

        def ref(value: bytes | None) -> int:
            if value is None:
                return 0
            values.append(value)
            return len(values) + 1  # ARGV[1] is the shape

        ix = INDEX_PREFIX
        shape = {
            "e": [[k, ref(v)] for k, v in txn.expect],
            "r": [[ix + i, n] for i, n in txn.room],
            "p": [[k, ref(v), _ms(t)] for k, v, t in txn.put],
            "d": list(txn.delete),
            "a": [[ix + i, m, repr(float(score))] for i, m, score in txn.add],
            "x": [[ix + i, m] for i, m in txn.remove],
        }
        names = [k for k, _ in txn.expect] + [k for k, _, _ in txn.put] + list(txn.delete)
        names += [ix + i for i, _ in txn.room] + [ix + i for i, _, _ in txn.add] + [ix + i for i, _ in txn.remove]
        reply = await self._commit(keys=list(dict.fromkeys(names)), args=[json.dumps(shape), *values])
        return _COMMITTED[int(reply)]

    async def scan(
        self, index: str, lo: float = float("-inf"), hi: float = float("inf"), limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, float]]:
        await self._ready()
        low, high = _bound(lo), _bound(hi)
        name = INDEX_PREFIX + index
        if reverse:
            rows = await self._redis.zrevrangebyscore(name, high, low, start=0, num=limit, withscores=True)
        else:
            rows = await self._redis.zrangebyscore(name, low, high, start=0, num=limit, withscores=True)
        return [(_text(row[0]), float(row[1])) for row in rows]

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._redis.delete(*keys)

    async def aclose(self) -> None:
        await self._redis.aclose()
