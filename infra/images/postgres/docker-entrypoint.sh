#!/usr/bin/env bash
# Entrypoint with the official postgres image's contract (a subset): reads POSTGRES_* (or
# *_FILE), runs initdb once on an empty $PGDATA, creates POSTGRES_DB, runs
# /docker-entrypoint-initdb.d/*.sh|*.sql, then execs postgres as the postgres user.
# The *_FILE secrets may be root-only files (mode 0400): they are read while root, before
# setpriv drops to postgres, and unset before postgres starts (nothing in its environment).
set -Eeuo pipefail

file_env() {
    local var="$1" file_var="${1}_FILE" default="${2:-}"
    if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (choose one)"
        exit 1
    fi
    local value="$default"
    if [ -n "${!var:-}" ]; then
        value="${!var}"
    elif [ -n "${!file_var:-}" ]; then
        value="$(<"${!file_var}")"
    fi
    export "$var"="$value"
    unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

SECRETS=(POSTGRES_PASSWORD POSTGRES_OWNER_PASSWORD POSTGRES_APP_PASSWORD)
for secret in "${SECRETS[@]}"; do
    file_env "$secret"
done

if [ "$(id -u)" = '0' ]; then
    # A fresh volume takes the image's directory (postgres, 0700). Fixing another one needs
    # CAP_CHOWN/CAP_FOWNER, which the stack drops: say how to fix it once instead.
    mkdir -p "$PGDATA"
    if [ "$(stat -c %U "$PGDATA")" != 'postgres' ] || [ "$(stat -c %a "$PGDATA")" != '700' ]; then
        if ! { chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"; } 2>/dev/null; then
            echo >&2 "error: $PGDATA is $(stat -c '%U:%G %a' "$PGDATA"), not postgres 700, and this" \
                "container may not change that; once: docker run --rm --entrypoint sh -v <volume>:/d" \
                "<this image> -c 'chown -R postgres:postgres /d && chmod 700 /d'"
            exit 1
        fi
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ]; then
        echo >&2 "error: database is uninitialized and POSTGRES_PASSWORD is not set"
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 \
        -D "$PGDATA"
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

    # Temporary server on the Unix socket only, so healthchecks over TCP stay red meanwhile.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres)
    if [ "$POSTGRES_DB" != 'postgres' ]; then
        "${psql[@]}" --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "running $f"; . "$f" ;;
            *.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "PostgreSQL init process complete; ready for start up."
fi

unset "${SECRETS[@]}"
exec "$@"
