"""Operator tasks (invoke). Each task is a thin shell around library code in app_patch/,
infra/ and bench/; ``invoke --list`` shows them. Every task exits non-zero with one clear line
(or a check table) on failure (``tasks._shared.task_errors``).

The main job is ``invoke up`` (stack up, migrated, verified). Passwords for the container
stack come from ``MA_INFRA_<SECRET>`` variables (the list: ``infra.config.STACK_SECRETS``);
``invoke secrets`` writes random ones to ``.data/stack.env``, which every task reads, and the
files the containers read to ``.data/secrets/``.

One module per area (stack, database, files, images, dev); the namespace is built here, at
the bottom, from every task. Heavy libraries are imported inside the tasks that need them.
"""

from __future__ import annotations

from dotenv import load_dotenv
from invoke import Collection

from infra.secrets_file import STACK_ENV
from tasks import database, dev, files, images, stack

load_dotenv(STACK_ENV, override=False)

ns = Collection(
    dev.secrets,
    stack.up,
    stack.preview,
    stack.deploy,
    stack.down,
    stack.verify,
    database.migrate,
    database.db_status,
    database.db_roles,
    files.retention,
    files.outbox,
    files.backup,
    files.restore,
    images.compose_file,
    images.build_images,
    images.seed_base_image,
    images.verify_containers,
    dev.serve,
    dev.test,
    dev.bench,
)
