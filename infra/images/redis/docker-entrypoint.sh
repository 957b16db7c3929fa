#!/usr/bin/env bash
# Starts redis-server as the redis user with `requirepass` from REDIS_PASSWORD(_FILE),
# written to a config file readable only by redis (so it is not on the command line).
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- redis-server "$@"
fi

if [ "$1" != 'redis-server' ]; then
    exec "$@"
fi

if [ "$(id -u)" = '0' ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then
    REDIS_PASSWORD="$(<"$REDIS_PASSWORD_FILE")"
fi

conf="$(mktemp /tmp/redis-auth.XXXXXX.conf)"
chmod 600 "$conf"
if [ -n "${REDIS_PASSWORD:-}" ]; then
    escaped="${REDIS_PASSWORD//\\/\\\\}"
    escaped="${escaped//\"/\\\"}"
    printf 'requirepass "%s"\n' "$escaped" >"$conf"
elif [ "${REDIS_ALLOW_EMPTY_PASSWORD:-no}" != 'yes' ]; then
    echo >&2 "error: REDIS_PASSWORD (or REDIS_PASSWORD_FILE) is not set"
    exit 1
fi

shift
exec redis-server "$conf" "$@"
