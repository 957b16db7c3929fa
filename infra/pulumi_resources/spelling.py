"""Values spelled exactly as the docker provider reads them back, so an unchanged stack diffs
to nothing: a container's ``cpus`` and a healthcheck's durations."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANO = Decimal(10) ** 9


def provider_cpus_spelling(nano_cpus: int) -> str:
    """How the provider reads ``HostConfig.NanoCPUs`` back into ``cpus``: a port of
    ``nanoInt64ToDecimalString`` (terraform-provider-docker v4.5.0,
    internal/provider/helpers.go:133-149, called from resource_docker_container_funcs.go:947):
    ``big.Rat(n, 1e9).FloatString(9)``; if that string holds exactly nine "0" characters it
    returns ``FloatString(1)`` (rounded half away from zero), else the string with its trailing
    zeros trimmed (so 10 CPUs read back as "10.")."""
    if nano_cpus == 0:
        return "0"
    value = Decimal(nano_cpus) / NANO
    nine = f"{value.quantize(Decimal('1e-9'), rounding=ROUND_HALF_UP):f}"
    if nine.count("0") == 9:
        return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):f}"
    return nine.rstrip("0")


def canonical_cpus(cpus: float | str | Decimal) -> str:
    """``cpus`` spelled exactly as the provider reads it back, so that an unchanged value never
    diffs (``cpus`` is ForceNew: any difference replaces the container on every ``up``).

    ``ValueError`` for a value the provider cannot keep: finer than a nano-CPU (docker's
    ``opts.ParseCPUs``: "value is too precise") or one whose read-back spelling is another
    number (0.05 reads back as "0.1", 10.05 as "10.1"), which no spelling could stop from
    replacing the container on every ``up``."""
    try:
        value = Decimal(str(cpus))
    except InvalidOperation:
        raise ValueError(f"cpus must be a number, not {cpus!r}") from None
    nano = value * NANO
    if not value.is_finite() or value <= 0 or nano != nano.to_integral_value():
        raise ValueError(f"cpus must be a positive multiple of 1e-9, not {cpus}")
    spelling = provider_cpus_spelling(int(nano))
    if Decimal(spelling) != value:
        raise ValueError(
            f"cpus {cpus} would be read back by the docker provider as {spelling} and replace "
            "the container on every up; choose a nearby value that keeps its spelling"
        )
    return spelling


def go_duration(seconds: int) -> str:
    """Whole seconds as Go's ``time.Duration.String()`` spells them, which is how the provider
    reads a healthcheck's durations back (resource_docker_container_funcs.go:964-967):
    5 -> "5s", 60 -> "1m0s", 3600 -> "1h0m0s"."""
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, not {seconds}")
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
