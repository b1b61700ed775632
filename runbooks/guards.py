"""Where cooldowns, the circuit breaker and the blast radius keep their state: SQL
(default) or Redis.

``check`` says whether an action may go ahead; ``reserve`` checks AND counts the
action in one atomic step, so two replicas racing for one app can never exceed
the breaker's limits:

- SQL: under the app's row lock, then the fleet's, in the decision's transaction
  (``runbooks.state``);
- Redis (``RUNBOOK_REDIS_URL``): one Lua script per call — a sorted set of action
  times per app for the hourly/daily counts, one for the whole fleet for the blast
  radius, and a key with a TTL per target and action for the cooldown. Redis runs
  a script atomically.

The blast radius (``RUNBOOK_MAX_ACTIONS_PER_WINDOW`` actions across every app
within ``RUNBOOK_ACTION_WINDOW_SECONDS``, after the per-app breaker) keeps a storm
of anomalies across many apps from becoming a storm of restarts.

A store that cannot be reached raises ``GuardUnavailable``: the caller refuses the
action and audits why (fail closed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from runbooks import state


class GuardUnavailable(Exception):
    """The guard state store did not answer: no action may pass."""


@dataclass
class Limits:
    cooldown: float
    hourly: int
    daily: int
    #: the blast radius: actions across every app within ``fleet_window`` seconds
    fleet: int = 3
    fleet_window: float = 600.0


class SqlGuards:
    name = "sql"

    def check(
        self, conn: Any, app: str, target: str, action: str, now: float, limits: Limits
    ) -> tuple[str, str] | None:
        return state.check_guards(
            conn,
            app,
            target,
            action,
            now,
            cooldown=limits.cooldown,
            hourly=limits.hourly,
            daily=limits.daily,
            fleet=limits.fleet,
            fleet_window=limits.fleet_window,
        )

    def reserve(
        self, conn: Any, app: str, target: str, action: str, now: float, limits: Limits
    ) -> tuple[str, str] | None:
        return self.check(conn, app, target, action, now, limits)

    def cooldowns(self, engine: Any, now: float, cooldown: float) -> dict[tuple[str, str], float]:
        """Seconds left per (target, action) still cooling down."""
        with engine.connect() as conn:
            return state.cooldowns(conn, now, cooldown)


_SCRIPT = """
-- KEYS[1] circuit zset of the app, KEYS[2] cooldown key of target+action,
-- KEYS[3] the fleet's zset (every app's actions)
-- ARGV: now, cooldown_ms, hourly, daily, reserve (1/0), member, fleet, fleet_window
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then
  return {'skipped_cooldown', tostring(ttl)}
end
local hour = redis.call('ZCOUNT', KEYS[1], now - 3600, '+inf')
if hour >= tonumber(ARGV[3]) then
  return {'skipped_circuit', 'hour', tostring(hour)}
end
local day = redis.call('ZCARD', KEYS[1])
if day >= tonumber(ARGV[4]) then
  return {'skipped_circuit', 'day', tostring(day)}
end
local fleet = redis.call('ZCARD', KEYS[3])
if fleet >= tonumber(ARGV[7]) then
  return {'skipped_blast_radius', tostring(fleet)}
end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('EXPIRE', KEYS[1], 90000)
  redis.call('ZADD', KEYS[3], now, ARGV[6])
  redis.call('EXPIRE', KEYS[3], math.ceil(window) + 60)
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[2])
  end
end
return {'ok'}
"""


class RedisGuards:
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "aiops:runbooks:", timeout: float = 2.0):
        import redis

        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.prefix = prefix
        self.script = self.client.register_script(_SCRIPT)

    def _run(
        self, app: str, target: str, action: str, now: float, limits: Limits, reserve: bool
    ) -> tuple[str, str] | None:
        import redis

        keys = [
            f"{self.prefix}circuit:{app}",
            f"{self.prefix}cooldown:{target}:{action}",
            f"{self.prefix}fleet",
        ]
        args = [
            now,
            int(limits.cooldown * 1000),
            limits.hourly,
            limits.daily,
            "1" if reserve else "0",
            f"{now:.6f}:{uuid.uuid4().hex[:8]}",
            limits.fleet,
            limits.fleet_window,
        ]
        try:
            out = [
                x.decode() if isinstance(x, bytes) else str(x)
                for x in self.script(keys=keys, args=args)
            ]
        except redis.RedisError as exc:
            raise GuardUnavailable(f"Redis: {type(exc).__name__}: {exc}") from None
        if out[0] == "ok":
            return None
        if out[0] == "skipped_cooldown":
            left = int(out[1]) / 1000
            return "skipped_cooldown", f"{action} on {target} is cooling down; {left:.0f}s left"
        if out[0] == "skipped_blast_radius":
            why = state.blast_radius_why(int(out[1]), limits.fleet, limits.fleet_window)
            return "skipped_blast_radius", why
        window, count = out[1], out[2]
        limit = limits.hourly if window == "hour" else limits.daily
        return "skipped_circuit", f"{count} actions for {app} in the last {window} (limit {limit})"

    def check(
        self, conn: Any, app: str, target: str, action: str, now: float, limits: Limits
    ) -> tuple[str, str] | None:
        return self._run(app, target, action, now, limits, reserve=False)

    def reserve(
        self, conn: Any, app: str, target: str, action: str, now: float, limits: Limits
    ) -> tuple[str, str] | None:
        return self._run(app, target, action, now, limits, reserve=True)

    def cooldowns(self, engine: Any, now: float, cooldown: float) -> dict[tuple[str, str], float]:
        out = {}
        pattern = f"{self.prefix}cooldown:*"
        for key in self.client.scan_iter(match=pattern, count=500):
            name = key.decode() if isinstance(key, bytes) else key
            target, _, action = name[len(self.prefix) + len("cooldown:") :].rpartition(":")
            ttl = self.client.pttl(key)
            if ttl > 0:
                out[(target, action)] = ttl / 1000
        return out

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False


def make_guards(redis_url: str | None) -> SqlGuards | RedisGuards:
    return RedisGuards(redis_url) if redis_url else SqlGuards()
