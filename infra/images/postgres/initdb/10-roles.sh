# Sourced by docker-entrypoint.sh at initdb time (psql=(...) is its superuser psql).
# Creates the schema owner and the application roles with their grants: the SQL is
# app_patch.db_roles.init_sql, rendered into the image at build time (build arg ROLES_SQL, set
# by infra/stack/ from the stack's database and role names). Passwords come from
# POSTGRES_OWNER_PASSWORD / POSTGRES_APP_PASSWORD (read from their *_FILE secrets by the
# entrypoint) through psql's \getenv, so they are never on a command line.
roles_sql=/usr/local/share/media-analysis/roles.sql
if [ -s "$roles_sql" ]; then
    if [ -z "${POSTGRES_OWNER_PASSWORD:-}" ] || [ -z "${POSTGRES_APP_PASSWORD:-}" ]; then
        echo >&2 "error: POSTGRES_OWNER_PASSWORD(_FILE) and POSTGRES_APP_PASSWORD(_FILE) are required"
        exit 1
    fi
    {
        printf '\\getenv owner_password POSTGRES_OWNER_PASSWORD\n'
        printf '\\getenv app_password POSTGRES_APP_PASSWORD\n'
        cat "$roles_sql"
    } | "${psql[@]}" --dbname "$POSTGRES_DB"
    echo "roles from $roles_sql created"
fi
