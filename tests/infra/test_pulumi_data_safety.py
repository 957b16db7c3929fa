"""The Pulumi program under Pulumi's official mocks: the resource options that keep data
(infra/README.md, "Pulumi: data safety"), and runs that change only what they must."""

from __future__ import annotations

from infra.pulumi_resources import NETWORK_IGNORE_CHANGES, VOLUME_IGNORE_CHANGES
from infra.stack import OWNER_LABEL
from tests.infra.pulumi_harness import (
    CONTAINER,
    IMAGE,
    NETWORK,
    PIDS_LIMIT,
    PROJECT,
    VOLUME,
    Run,
    run_program,
    unwrap,
)
from tests.infra.pulumi_names import API, EXTERNAL_PASSWORDS, LOADER, PG, REDIS

DATA_VOLUMES = {"pg-data", "redis-data", "media-storage"}


def test_volumes_and_the_network_are_retained_and_never_replaced() -> None:
    run = run_program({})

    volumes = {name: opts for (typ, name), opts in run.options.items() if typ == VOLUME}
    assert set(volumes) == DATA_VOLUMES | {LOADER}
    for name, opts in volumes.items():
        assert opts.retain_on_delete, f"pulumi destroy would delete {name}"
        assert not opts.protect, "invoke down --volumes must still be able to remove it"
        assert not opts.delete_before_replace
        # Every ForceNew input of docker_volume but name (the resource name too).
        assert set(opts.ignore_changes) == set(VOLUME_IGNORE_CHANGES)
    assert set(VOLUME_IGNORE_CHANGES) == {"driver", "driverOpts", "labels"}
    network = run.options[(NETWORK, "af-network")]
    assert network.retain_on_delete and not network.protect
    assert set(network.ignore_changes) == {"driver", "labels"}
    # The volumes' and network's inputs are only what the ignore lists cover, plus name.
    for name, inputs in run.of_type(VOLUME).items():
        assert set(inputs) - set(VOLUME_IGNORE_CHANGES) == {"name"}, name
    assert set(run.of_type(NETWORK)["af-network"]) - set(NETWORK_IGNORE_CHANGES) == {"name"}


def test_servers_are_retained_and_the_api_is_not() -> None:
    """``pulumi destroy`` and a switch to external mode leave the managed servers running
    (their data and the shared network outlive the stack). The API (and its never-started
    secrets loader) is not retained: the provider replaces docker_container delete-first
    (pulumi-docker provider/resources.go:114, DeleteBeforeReplace), and a retained container
    would skip that delete and collide with its replacement's fixed name on every rebuild.
    (A retained server that must be replaced is removed by ``invoke up`` first.)"""
    run = run_program({})

    for name in (PG, REDIS):
        assert run.options[(CONTAINER, name)].retain_on_delete, name
    for name in (API, LOADER):
        assert not run.options[(CONTAINER, name)].retain_on_delete, name


def test_every_container_carries_the_stacks_owner_label() -> None:
    run = run_program({})

    for name, inputs in run.containers.items():
        labels = {label["label"]: label["value"] for label in inputs["labels"]}
        assert labels[OWNER_LABEL] == f"pulumi:{PROJECT}/test", name
    assert run.outputs["owner"] == f"pulumi:{PROJECT}/test"


def test_a_rebuilt_api_image_changes_only_the_api_containers_image() -> None:
    before = run_program({}, image_ids={f"{API}-image": "sha256:" + "a" * 64})
    after = run_program({}, image_ids={f"{API}-image": "sha256:" + "b" * 64})

    assert before.containers[API]["image"] == "sha256:" + "a" * 64
    assert after.containers[API]["image"] == "sha256:" + "b" * 64
    old, new = inputs_by_resource(before), inputs_by_resource(after)
    assert set(old) == set(new)
    changed = {
        (*resource, key)
        for resource in old
        for key in set(old[resource]) | set(new[resource])
        if old[resource].get(key) != new[resource].get(key)
    }
    assert changed == {(CONTAINER, API, "image")}
    # Every service runs its image by id, never by tag.
    for name in (PG, REDIS, API):
        assert before.containers[name]["image"].startswith("sha256:"), name


def test_a_second_run_without_change_declares_identical_inputs_and_options() -> None:
    first, second = run_program({"apiCpus": "10"}), run_program({"apiCpus": "10"})

    assert inputs_by_resource(first) == inputs_by_resource(second)
    assert first.options == second.options


def inputs_by_resource(run: Run) -> dict[tuple[str, str], dict[str, object]]:
    """Every registration's inputs (secrets unwrapped), by type and name: the order in which
    resources register is not fixed."""
    registered = {(r.typ, r.name): unwrap(r.inputs) for r in run.resources}
    assert len(registered) == len(run.resources)
    return registered


def test_switching_managed_to_external_deletes_no_data_and_not_the_network() -> None:
    managed = run_program({"mode": "managed"})
    external = run_program({"mode": "external"}, EXTERNAL_PASSWORDS)

    dropped = set(managed.options) - set(external.options)
    kept = {key for key in dropped if managed.options[key].retain_on_delete}
    assert kept == {
        (NETWORK, "af-network"),
        (VOLUME, "pg-data"),
        (VOLUME, "redis-data"),
        (CONTAINER, PG),
        (CONTAINER, REDIS),
    }
    # What the switch does delete holds no data and runs nothing: the servers' images (Image
    # delete is a no-op, provider.go:490-495; RemoteImage keeps the image locally) and their
    # pids-limit records. The servers keep running: external mode finds them by name.
    # README: "Pulumi: data safety".
    assert dropped - kept == {
        (IMAGE, f"{PG}-image"),
        (IMAGE, f"{REDIS}-image"),
        (PIDS_LIMIT, f"{PG}-pids"),
        (PIDS_LIMIT, f"{REDIS}-pids"),
    }
    # Whatever both modes declare keeps the same options.
    for key in set(managed.options) & set(external.options):
        assert managed.options[key] == external.options[key], key
