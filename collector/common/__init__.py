"""What ``collector-daemon``, ``collector-pump`` and the app client share.

Importing this package (or any module of it) loads neither the in-app
client (:mod:`collector._client`, with its at-fork and at-exit hooks) nor
any sink driver, so both services can use it freely::

    stream      the Redis stream contract: shard keys, entry fields, record ids
    redisconn   one way to open a Redis connection (redis/rediss/unix URLs)
    health      the /healthz, /readyz and /metrics server
    log         structured logs (key=value or JSON) and the rate limiter
    settings    the config base: YAML + environment, renamed keys, error lines
    service     the keys both services share (Redis, retry, health, logs)
    counters    lock-free per-process counters in shared memory, by name
    redact      passwords out of URLs and text
"""
