"""The roles of a trust-auth server (the embedded pgserver, the tests' servers)."""

from __future__ import annotations

from app_patch.db_roles.connect import RoleUrls, role_url
from app_patch.db_roles.ensure import ensure_roles

EMBEDDED_OWNER = "ma_owner"
"""Role names the embedded server (and the test suite) use; any names work elsewhere."""
EMBEDDED_APP = "ma_app"


def embedded_role_urls(admin_url: str, database: str) -> RoleUrls:
    """Set up :data:`EMBEDDED_OWNER` and :data:`EMBEDDED_APP` on a trust-auth server (the
    embedded pgserver, the tests' servers) and return their URLs, without passwords."""
    ensure_roles(
        admin_url,
        database=database,
        owner=EMBEDDED_OWNER,
        owner_password=None,
        app=EMBEDDED_APP,
        app_password=None,
    )
    return RoleUrls(
        owner=role_url(admin_url, EMBEDDED_OWNER, database=database),
        app=role_url(admin_url, EMBEDDED_APP, database=database),
    )
