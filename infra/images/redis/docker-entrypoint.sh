#!/usr/bin/env bash
# Starts redis-server as the redis user with /etc/redis/media-analysis.conf and these users:
#   default                       disabled ("reset": off, no password, no command, no key)
#   $REDIS_ADMIN_USER (ma-admin)  $REDIS_ADMIN_RULES, password REDIS_PASSWORD(_FILE)
#   $REDIS_APP_USER (optional)    $REDIS_APP_RULES, password REDIS_APP_PASSWORD(_FILE)
# The *_FILE secrets are root-only files: they are read while root, before setpriv drops to
# redis. Passwords land in the generated config only as SHA-256 (`#<hex>`), in a file only the
# redis user can read; `maxmemory` comes from REDIS_MAXMEMORY when set.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- redis-server "$@"
fi

if [ "$1" != 'redis-server' ]; then
    exec "$@"
fi

file_env() {
    local var="$1" file_var="${1}_FILE"
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (choose one)"
        exit 1
    fi
    if [ -n "${!file_var:-}" ]; then
        export "$var"="$(<"${!file_var}")"
    fi
    unset "$file_var"
}

file_env REDIS_PASSWORD
file_env REDIS_APP_PASSWORD

if [ "$(id -u)" = '0' ]; then
    # A fresh volume takes the image's /data (redis). Fixing another one needs CAP_CHOWN,
    # which the stack drops: say how to fix it once instead.
    if [ "$(stat -c %U /data)" != 'redis' ] && ! chown -R redis:redis /data 2>/dev/null; then
        echo >&2 "error: /data belongs to $(stat -c %U:%G /data), not redis, and this container may" \
            "not chown it; once: docker run --rm --entrypoint chown -v <volume>:/data <this image>" \
            "-R redis:redis /data"
        exit 1
    fi
    exec setpriv --reuid=redis --regid=redis --init-groups "${BASH_SOURCE[0]}" "$@"
fi

one_line() {
    case "$2" in
        *$'\n'* | *$'\r'*) echo >&2 "error: $1 must be one line"; exit 1 ;;
    esac
}
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

admin_user="${REDIS_ADMIN_USER:-ma-admin}"
admin_rules="${REDIS_ADMIN_RULES:-~* &* +@all}"
if [ -z "${REDIS_PASSWORD:-}" ]; then
    echo >&2 "error: REDIS_PASSWORD (or REDIS_PASSWORD_FILE) is not set: the admin user needs one"
    exit 1
fi
for name in REDIS_ADMIN_USER REDIS_ADMIN_RULES REDIS_APP_USER REDIS_APP_RULES REDIS_MAXMEMORY; do
    one_line "$name" "${!name:-}"
done

conf="$(mktemp /tmp/redis.XXXXXX.conf)"
chmod 600 "$conf"
{
    echo "include /etc/redis/media-analysis.conf"
    if [ -n "${REDIS_MAXMEMORY:-}" ]; then
        echo "maxmemory $REDIS_MAXMEMORY"
    fi
    echo "user default reset"
    echo "user $admin_user reset on #$(sha256 "$REDIS_PASSWORD") $admin_rules"
    if [ -n "${REDIS_APP_USER:-}" ]; then
        if [ -z "${REDIS_APP_PASSWORD:-}" ]; then
            echo >&2 "error: REDIS_APP_USER is set but REDIS_APP_PASSWORD(_FILE) is not"
            exit 1
        fi
        echo "user $REDIS_APP_USER reset on #$(sha256 "$REDIS_APP_PASSWORD") ${REDIS_APP_RULES:-}"
    fi
} >"$conf"
unset REDIS_PASSWORD REDIS_APP_PASSWORD

shift
exec redis-server "$conf" "$@"
