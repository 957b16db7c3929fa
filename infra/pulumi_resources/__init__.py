"""A :class:`~infra.spec.Stack` rendered as ``pulumi_docker`` resources: containers
(:func:`render`) or, with ``target: swarm``, swarm services (:func:`render_swarm`).

* :mod:`~infra.pulumi_resources.shared`: the network, volumes, images and labels both share;
* :mod:`~infra.pulumi_resources.containers`: one ``docker.Container`` a service;
* :mod:`~infra.pulumi_resources.swarm`: swarm secrets and one ``docker.Service`` a service;
* :mod:`~infra.pulumi_resources.spelling`: inputs spelled as the provider reads them back.
"""

from infra.pulumi_resources.containers import SECRETS_REVISION_LABEL, WAIT_TIMEOUT_S, render
from infra.pulumi_resources.shared import (
    NETWORK_IGNORE_CHANGES,
    VOLUME_IGNORE_CHANGES,
    Rendered,
    network_options,
    volume_options,
)
from infra.pulumi_resources.spelling import canonical_cpus, go_duration, provider_cpus_spelling
from infra.pulumi_resources.swarm import render_swarm

__all__ = [
    "NETWORK_IGNORE_CHANGES",
    "SECRETS_REVISION_LABEL",
    "VOLUME_IGNORE_CHANGES",
    "WAIT_TIMEOUT_S",
    "Rendered",
    "canonical_cpus",
    "go_duration",
    "network_options",
    "provider_cpus_spelling",
    "render",
    "render_swarm",
    "volume_options",
]
