"""The Pulumi program's inputs spelled as the docker provider reads them back (cpus,
durations), so a second run sees no change; cpus it cannot keep are refused."""

from __future__ import annotations

from decimal import Decimal

import pulumi
import pytest

from infra.pulumi_resources import canonical_cpus, provider_cpus_spelling
from tests.infra.pulumi_harness import run_program
from tests.infra.pulumi_names import API, PG, REDIS


def test_read_back_inputs_are_spelled_as_the_provider_reads_them() -> None:
    run = run_program({"apiCpus": "10"})
    api = run.containers[API]

    assert api["cpus"] == "10."
    assert api["cpus"] == go_nano_to_decimal_string(int(Decimal(api["cpus"]) * 10**9))
    for name in (PG, REDIS, API):
        check = run.containers[name]["healthcheck"]
        for key in ("interval", "timeout", "startPeriod"):
            assert check[key] == go_duration_string(int(check[key].rstrip("s"))), (name, key)


def go_nano_to_decimal_string(nano: int) -> str:
    """terraform-provider-docker v4.5.0 internal/provider/helpers.go:133-149, literally:

        rat := new(big.Rat).SetFrac64(nanoInt64, 1e9)
        str := rat.FloatString(9)
        if strings.Count(str, "0") == 9 { return rat.FloatString(1) }
        str = strings.TrimRight(str, "0")
    (big.Rat.FloatString rounds its last digit half away from zero.)"""
    if nano == 0:
        return "0"
    whole, frac = divmod(nano, 10**9)
    text = f"{whole}.{frac:09d}"
    if text.count("0") == 9:
        tenths = (nano + 5 * 10**7) // 10**8  # positive: half away from zero
        return f"{tenths // 10}.{tenths % 10}"
    return text.rstrip("0")


def go_duration_string(seconds: int) -> str:
    """Go's time.Duration(seconds * time.Second).String()."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s" if minutes else f"{secs}s"
    )


@pytest.mark.parametrize(
    ("nano", "expected"),
    # helpers_test.go:35-40 (the provider's own table), then values the issue names.
    [
        (0, "0"),
        (10**9, "1.0"),
        (1_500_000_000, "1.5"),
        (2 * 10**9, "2.0"),
        (2_250_000_000, "2.25"),
        (10 * 10**9, "10."),
        (5 * 10**7, "0.1"),
        (105 * 10**6, "0.105"),
    ],
)
def test_provider_spelling_port_matches_the_providers_table(nano: int, expected: str) -> None:
    assert go_nano_to_decimal_string(nano) == expected
    assert provider_cpus_spelling(nano) == expected


@pytest.mark.parametrize(
    "value", ["1.0", "1", "1.5", "2.25", "10", "20", "64", "0.5", "0.25", "0.105", "3.333", "0.011"]
)
def test_canonical_cpus_is_a_fixed_point_of_the_providers_read_back(value: str) -> None:
    spelled = canonical_cpus(value)
    nano = int(Decimal(spelled) * 10**9)

    assert Decimal(spelled) == Decimal(value)  # the same number of CPUs...
    assert go_nano_to_decimal_string(nano) == spelled  # ...spelled as it comes back
    assert canonical_cpus(spelled) == spelled


@pytest.mark.parametrize("value", ["0.05", "10.05", "0.001", "0", "-1", "1e-10", "x"])
def test_cpus_the_provider_cannot_keep_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cpus"):
        canonical_cpus(value)


def test_unkeepable_api_cpus_fails_naming_the_setting() -> None:
    with pytest.raises(pulumi.RunError) as error:
        run_program({"apiCpus": "0.05"})

    assert "apiCpus: cpus 0.05 would be read back by the docker provider as 0.1" in str(error.value)
