"""The Redis side: the client factory and every command the cache sends.

Those are GET, PING and four Lua scripts (each one atomic on the server). The scripts are
the server half of the envelope (``app_patch.cache.envelope``): ``"<rank>:<gen>:<body>"``.
The Redis ACL of the app user (``infra/redis_acl.py``) is checked against this file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app_patch.settings import RedisSettings

T = TypeVar("T")
Op = Callable[[Redis], Awaitable[T]]
"""One Redis call, run by the cache behind its breaker and deadline."""

# Lua: parse "<rank>:<gen>:<body>" -> exists, rank, gen, has_body.
_PARSE = """
local function parse(v)
  if not v then return false, 0, 0, false end
  local a = string.find(v, ':', 1, true)
  local b = a and string.find(v, ':', a + 1, true)
  if not b then return true, 0, 0, false end
  local rank = tonumber(string.sub(v, 1, a - 1)) or 0
  return true, rank, tonumber(string.sub(v, a + 1, b - 1)) or 0, b < #v
end
"""

# Write-through: ARGV rank, body, ttl_ms. Never replaces a higher rank; bumps gen.
_PUT = (
    _PARSE
    + """
local exists, rank, gen = parse(redis.call('GET', KEYS[1]))
if exists and rank > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. (gen + 1) .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""
)

# Invalidation: ARGV ttl_ms. A tombstone that keeps the rank and bumps gen.
_INVALIDATE = (
    _PARSE
    + """
local exists, rank, gen = parse(redis.call('GET', KEYS[1]))
redis.call('SET', KEYS[1], rank .. ':' .. (gen + 1) .. ':', 'PX', ARGV[1])
return gen + 1
"""
)

# Read-through fill: ARGV token, rank, body, ttl_ms. Only if the key is as the reader saw it:
# token "-" = absent, otherwise the generation of the tombstone it saw.
_FILL = (
    _PARSE
    + """
local exists, rank, gen, body = parse(redis.call('GET', KEYS[1]))
if body then return 0 end
local seen = '-'
if exists then seen = tostring(gen) end
if seen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. gen .. ':' .. ARGV[3], 'PX', ARGV[4])
return 1
"""
)

# A counter that was lost (eviction, restart) restarts at "now", never at an old version.
_BUMP_VERSION = """
local v = redis.call('INCR', KEYS[1])
if v == 1 then v = redis.call('INCRBY', KEYS[1], ARGV[1]) end
return v
"""


def make_client(settings: RedisSettings, url: str) -> Redis:
    """A pooled asyncio client with short timeouts and no redis-py retries.

    redis-py's default client retries 3 times with backoff; here one failure is final so a
    dead Redis costs one timeout and then the breaker takes over.
    """
    if settings.tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.op_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    if settings.password is not None:  # the URL's own password would win in from_url
        pool.connection_kwargs["password"] = settings.password.get_secret_value()
    return Redis.from_pool(pool)


class Commands:
    """The calls the cache makes, as ``Op`` values; the scripts are registered once."""

    def __init__(self, client: Redis) -> None:
        self._put = client.register_script(_PUT)
        self._fill = client.register_script(_FILL)
        self._invalidate = client.register_script(_INVALIDATE)
        self._bump_version = client.register_script(_BUMP_VERSION)

    @staticmethod
    def get(key: str) -> Op[bytes | str | None]:
        return lambda c: c.get(key)

    @staticmethod
    def ping() -> Op[bool]:
        return lambda c: c.ping()

    def put(self, key: str, rank: int, body: bytes, ttl_ms: int) -> Op[int]:
        """Ranked write-through: 1 if stored, 0 if a higher rank is there."""
        return lambda c: self._put(keys=[key], args=[rank, body, ttl_ms])

    def fill(self, key: str, token: str, rank: int, body: bytes, ttl_ms: int) -> Op[int]:
        """Conditional read-through fill: 1 if the key was still as ``token`` says."""
        return lambda c: self._fill(keys=[key], args=[token, rank, body, ttl_ms])

    def invalidate(self, key: str, ttl_ms: int) -> Op[int]:
        """A tombstone that keeps the rank and bumps the generation."""
        return lambda c: self._invalidate(keys=[key], args=[ttl_ms])

    def bump_version(self, key: str, now_us: int) -> Op[int]:
        return lambda c: self._bump_version(keys=[key], args=[now_us])
