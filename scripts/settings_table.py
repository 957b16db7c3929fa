"""Print the README's settings table from app_patch.settings (the single source of truth)."""

from __future__ import annotations

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from app_patch.settings import PROJECT_ROOT, Settings


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    return str(value).replace(f"{PROJECT_ROOT}/", "")


def _env_name(prefix: str, name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return " / ".join(str(choice) for choice in choices)
    return f"{prefix}{name}".upper()


def rows() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    top_prefix = str(Settings.model_config.get("env_prefix", ""))
    for name, field in Settings.model_fields.items():
        group = field.default_factory
        if isinstance(group, type) and issubclass(group, BaseSettings):
            prefix = str(group.model_config.get("env_prefix", ""))
            for sub_name, sub_field in group.model_fields.items():
                out.append(
                    (
                        _env_name(prefix, sub_name, sub_field),
                        _default(sub_field),
                        sub_field.description or "",
                    )
                )
        else:
            out.append(
                (_env_name(top_prefix, name, field), _default(field), field.description or "")
            )
    return out


def markdown() -> str:
    lines = ["| env var | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{env}` | `{default}` | {doc} |" for env, default, doc in rows()]
    return "\n".join(lines)


def write_readme() -> None:
    """Replace the table between the README's settings-table markers."""
    import re

    readme = PROJECT_ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(
        r"(<!-- settings-table:start.*?-->\n)(.*?)(\n<!-- settings-table:end -->)", re.S
    )
    updated, count = pattern.subn(lambda m: m.group(1) + markdown() + m.group(3), text)
    if count != 1:
        raise SystemExit("error: README.md has no settings-table markers")
    readme.write_text(updated, encoding="utf-8")


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv[1:]:
        write_readme()
    else:
        print(markdown())
