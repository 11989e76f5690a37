"""Settings errors a person can act on: one line per bad variable, with its value and what
is allowed, every bad variable of the groups a command reads at once.

`check(KafkaSettings, MongoSettings)` loads each group and raises one `SettingsError` that
lists every bad variable of all of them, e.g.

    MONGO_TIMEOUT_MS='abc': must be a whole number, at least 100
    INGEST_MAX_EVENTS_PER_RUN='-5': must be a whole number, at least 1

Secrets never show: a `SecretStr` field, any `*_PASSWORD`, `*_TOKEN` or `*_SECRET*`
variable, and the credentials of a URI (`mongodb://***@host/`) are masked.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from enrollment_pipeline import settings as settings_module

S = TypeVar("S", bound=BaseSettings)

_SECRET_NAME = re.compile(r"(_PASSWORD|_TOKEN|_SECRET.*|_KEY)$")
_URI_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


class SettingsError(ValueError):
    """Settings that cannot be used: one line per bad variable (`lines`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load(group: type[S]) -> S:
    """One settings group from the environment; a bad value raises `SettingsError`."""
    try:
        return group()
    except ValidationError as exc:
        raise SettingsError(describe(exc, group)) from None


def check(*groups: type[BaseSettings]) -> None:
    """Load every group; raise one `SettingsError` listing the bad variables of them all."""
    lines: list[str] = []
    for group in groups:
        try:
            group()
        except ValidationError as exc:
            lines += [line for line in describe(exc, group) if line not in lines]
    if lines:
        raise SettingsError(lines)


def load_only(*wanted: tuple[type[BaseSettings], tuple[str, ...]]) -> list[BaseSettings]:
    """Each group with only the named fields checked, e.g. `load_only((MongoSettings,
    ("mongo_database",)))`: a bad variable of the group outside them is not read (its
    default stands in), so a command that repeats one value does not fail on another. One
    `SettingsError` lists the bad named fields of every group."""
    loaded: list[BaseSettings] = []
    lines: list[str] = []
    for group, names in wanted:
        try:
            loaded.append(group())
            continue
        except ValidationError as exc:
            errors = exc.errors()
        named = [e for e in errors if not e["loc"] or e["loc"][0] in names]
        if named:
            lines += _lines(named, group)
            continue
        others = {str(e["loc"][0]) for e in errors}
        defaults = {f: group.model_fields[f].get_default(call_default_factory=True) for f in others}
        loaded.append(group(**defaults))
    if lines:
        raise SettingsError(lines)
    return loaded


def group_of(error: ValidationError) -> type[BaseSettings] | None:
    """The settings group a ValidationError was raised for (by its title), if it is one."""
    found = getattr(settings_module, error.title, None)
    if isinstance(found, type) and issubclass(found, BaseSettings):
        return found
    return None


def describe(error: ValidationError, group: type[BaseSettings]) -> list[str]:
    """`NAME='value': must be …` for each bad variable, values of secrets masked."""
    return _lines(error.errors(), group)


def _lines(errors: Sequence[Any], group: type[BaseSettings]) -> list[str]:
    prefix = str(group.model_config.get("env_prefix") or "")
    lines = []
    for item in errors:
        if not item["loc"]:
            lines.append(str(item["msg"]))
            continue
        field_name = str(item["loc"][0])
        field = group.model_fields.get(field_name)
        name = f"{prefix}{field_name}".upper()
        value = shown_value(name, field, item.get("input"))
        lines.append(f"{name}={value}: must be {allowed(field, item)}")
    return lines


def shown_value(name: str, field: FieldInfo | None, value: Any) -> str:
    """The value as the user set it, quoted, or `'***'` for a secret."""
    if (field is not None and _is_secret(field)) or _SECRET_NAME.search(name):
        return "'***'"
    text = str(value)
    return repr(_URI_CREDENTIALS.sub(r"\1***@", text))


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


def allowed(field: FieldInfo | None, item: Any) -> str:
    """What the variable may be: our validators say it; otherwise its type and bounds."""
    if item["type"] == "value_error":
        return str(item.get("ctx", {}).get("error", item["msg"]))
    if field is None:
        return str(item["msg"])
    annotation = _without_none(field.annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number" + _bounds(field)
    if annotation is float:
        return "a number" + _bounds(field)
    if annotation is date:
        return "a date YYYY-MM-DD"
    return str(item["msg"])


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(field: FieldInfo) -> str:
    low = high = None
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = f"at least {rule.ge}"
            if any(isinstance(other, annotated_types.Le) for other in field.metadata):
                (le,) = (o.le for o in field.metadata if isinstance(o, annotated_types.Le))
                return f", from {rule.ge} to {le}"
        elif isinstance(rule, annotated_types.Gt):
            low = f"greater than {rule.gt}"
        elif isinstance(rule, annotated_types.Le):
            high = f"at most {rule.le}"
        elif isinstance(rule, annotated_types.Lt):
            high = f"less than {rule.lt}"
    return "".join(f", {bound}" for bound in (low, high) if bound)
