"""The policy file: its pydantic model, YAML loading, and the exported JSON Schema.

Owns: what a valid policy is (version, limits, protected tags, rules) and how a
bad one is reported: one line naming the file, then one bullet per field
(``rules[2].action: ...``). Must not: open the store, call the API, or print.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flowsync import __version__
from flowsync.config import RULE_TIMEOUT_MAX_SECONDS, RULE_TIMEOUT_MIN_SECONDS, check_number
from flowsync.errors import PolicyError
from flowsync.states import StateType

RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
KEEP_NEWEST_MAX = 1_000_000_000


def _written_as_number(schema: dict[str, Any]) -> None:
    """The JSON Schema of an optional number that may be left out but not written empty
    (``_RuleBase._not_empty``): an editor flags `limit:` with no value as the policy does."""
    number = next(s for s in schema.pop("anyOf") if s.get("type") != "null")
    schema.update(number)
    schema.pop("default", None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_rule_timeout(timeout: object) -> float | None:
    """``--rule-timeout`` (the library's ``timeout=``): None (the policy's), or seconds from
    0.1 to 3600, the bound of the policy's own rule_timeout_seconds; else a ``ConfigError``."""
    if timeout is None:
        return None
    seconds = check_number(
        "--rule-timeout",
        timeout,
        low=RULE_TIMEOUT_MIN_SECONDS,
        high=RULE_TIMEOUT_MAX_SECONDS,
        metavar="SECONDS (the bound of a policy's rule_timeout_seconds)",
    )
    return float(seconds)


class TargetState(_Strict):
    """The state ``set_state`` moves runs to (Prefect's StateCreate)."""

    type: StateType = Field(description="Prefect state type, e.g. CANCELLED.")
    name: str | None = Field(
        None,
        strict=True,
        description="Display name, e.g. Cancelled. Default: Prefect's for the type.",
    )
    message: str | None = Field(
        None, strict=True, description="Shown in the Prefect UI next to the state."
    )

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _RuleBase(_Strict):
    name: str = Field(
        strict=True,
        pattern=RULE_NAME,
        max_length=100,
        description="Unique rule name; recorded in the audit table.",
    )
    description: str | None = Field(
        None, strict=True, description="Why this rule exists (free text)."
    )
    enabled: bool = Field(
        True, strict=True, description="false: the rule is validated but selects nothing."
    )
    sql: str = Field(
        strict=True,
        min_length=1,
        description="One read-only SELECT over the local DuckDB file returning an `id` column of flow-run ids.",
    )
    limit: int | None = Field(
        None,
        strict=True,
        ge=1,
        description="At most this many runs per apply (oldest first).",
        json_schema_extra=_written_as_number,
    )
    keep_newest: int | None = Field(
        None,
        strict=True,
        ge=0,
        # apply's decision of a batch counts with it in DuckDB (BIGINT): more than any
        # deployment's runs, far from its bound
        le=KEEP_NEWEST_MAX,
        description="Never touch the N newest selected runs of each deployment (runs without a "
        "deployment: of each flow).",
        json_schema_extra=_written_as_number,
    )

    @field_validator("limit", "keep_newest", mode="before")
    @classmethod
    def _not_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # Only a key written out is validated: `keep_newest:` with no value, `~` or `null`
        # (a placeholder, a number commented out, an unset template variable) is YAML's null,
        # which would run the rule without the guard the line was written for.
        if value is None:
            raise ValueError(
                f"empty (YAML reads `{info.field_name}:` with no value, `~` or `null` as none, "
                f"which would run the rule without it); write the number, or leave "
                f"`{info.field_name}` out for none"
            )
        return value


class DeleteRule(_RuleBase):
    """Delete the selected runs on the server (``POST /flow_runs/bulk_delete``)."""

    action: Literal["delete"]


class SetStateRule(_RuleBase):
    """Move the selected runs to ``state`` (``POST /flow_runs/bulk_set_state``)."""

    action: Literal["set_state"]
    state: TargetState = Field(description="The state to set.")
    force: bool = Field(
        False,
        strict=True,
        description="true: skip Prefect's orchestration rules for the transition.",
    )


Rule = Annotated[DeleteRule | SetStateRule, Field(discriminator="action")]


def _protecting(tag: str) -> str:
    if not tag.strip():
        raise ValueError(
            f"{tag!r} protects no run (an empty tag, e.g. a template variable that was unset); "
            "write the tag, or remove the entry"
        )
    return tag


ProtectedTag = Annotated[str, Field(strict=True), AfterValidator(_protecting)]


class Policy(_Strict):
    """A policy file (``version: 1``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="flowsync policy")

    version: Literal[1] = Field(description="Policy file format version; always 1.")
    max_actions: int = Field(
        1000,
        strict=True,
        ge=1,
        description="Refuse to apply when the rules select more runs than this.",
    )
    protect_tags: list[ProtectedTag] = Field(
        default_factory=list,
        strict=True,
        description="Runs with any of these tags are never touched.",
    )
    rule_timeout_seconds: float = Field(
        60.0,
        strict=True,
        ge=RULE_TIMEOUT_MIN_SECONDS,
        le=RULE_TIMEOUT_MAX_SECONDS,
        description="Each rule's SQL is stopped after this many seconds (plan, apply, policy check).",
    )
    rules: list[Rule] = Field(
        min_length=1,
        description="Applied in order; a run goes to the first rule that acts on it (not to "
        "one that leaves it: over its limit, among its keep_newest).",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _known_format(cls, version: Any) -> Any:
        if isinstance(version, (bool, float)):  # `true` or `1.0` would pass as 1
            raise ValueError(f"{version!r} is not a format version; write `version: 1`")
        if isinstance(version, int) and version > 1:
            raise ValueError(
                f"{version} is a newer policy format than this flowsync reads (it reads 1); "
                "upgrade flowsync (pip install -U flowsync), or write the policy for version 1"
            )
        return version

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(
                    f"rule name {rule.name!r} is used twice; rule names must be unique"
                )
            seen.add(rule.name)
        return self


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy and where it came from; ``sha256`` is of the file's bytes."""

    policy: Policy
    source: str
    sha256: str


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would silently keep the last one)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    keys: set[Any] = set()
    merges = 0
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            merges += 1
            if merges > 1:  # PyYAML would let the later merge's keys replace the earlier's
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "duplicate key '<<' (a second merge silently replaces keys the first "
                    "gave): merge once, `<<: [*a, *b]`, where the first wins",
                    key_node.start_mark,
                )
            continue  # `<<: *anchor`: merged below, and a key written out overrides it
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str) and not isinstance(key_node, yaml.CollectionNode):
            # `1:`, `on:`, `~:` are a number, a boolean, null: no policy key is one
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key that is not text ({key_node.value}); policy keys are names such as "
                "version, rules or sql: quote it or check its spelling",
                key_node.start_mark,
            )
        try:
            repeated = key in keys
        except TypeError:  # a list or mapping as a key
            raise yaml.constructor.ConstructorError(
                None, None, "a key that is a list or a mapping", key_node.start_mark
            ) from None
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        keys.add(key)
    return dict(loader.construct_mapping(node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 (PyYAML's, whatever a `%YAML 1.2` line says) reads `010` as 8 (octal) and `1:30`
# as 90 (base 60): `keep_newest: 010` would keep 8 runs, not the 10 the file shows.
_OCTAL = re.compile(r"[-+]?0[0-7_]*[0-7][0-7_]*")


def _number(node: yaml.ScalarNode, value: Any) -> Any:
    text = str(node.value)
    if ":" in text or _OCTAL.fullmatch(text):
        kind = "base 60" if ":" in text else "octal, for its leading zero"
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"YAML reads the number {text} as {value} ({kind}); write the number you mean "
            "in plain digits, without a leading zero or `:`",
            node.start_mark,
        )
    return value


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
    return _number(node, loader.construct_yaml_int(node))


def _construct_float(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
    return _number(node, loader.construct_yaml_float(node))


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("delete", "set_state") and i > 0 and isinstance(loc[i - 1], int):
            continue  # the discriminator tag pydantic adds; the user wrote `action:`
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _other_actions_key(loc: Any) -> tuple[str, str] | None:
    """(this rule's action, the other action) when ``loc`` is a key of a rule that the other
    action's rules take (``state`` on a delete rule), else None."""
    parts = tuple(loc)
    for i, part in enumerate(parts[:-1]):
        if part in ("delete", "set_state") and i > 0 and isinstance(parts[i - 1], int):
            other = "set_state" if part == "delete" else "delete"
            model = SetStateRule if other == "set_state" else DeleteRule
            if len(parts) == i + 2 and parts[-1] in model.model_fields:
                return str(part), other
    return None


def _line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest ancestor found)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                continue  # e.g. the discriminator tag pydantic adds, or a missing key
            line = match[0].start_mark.line + 1
            node = match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def format_errors(e: ValidationError, root: yaml.Node | None = None) -> list[str]:
    """One line per field: ``rules[2].action: ... (line 7)``."""
    lines = []
    for error in e.errors(include_url=False):
        loc = _loc(tuple(error["loc"]))
        at = _line(root, tuple(error["loc"]))
        if error["type"] == "union_tag_invalid":
            ctx = error.get("ctx", {})
            loc += ".action"
            msg = f"unknown action {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif error["type"] == "union_tag_not_found":
            loc += ".action"
            msg = "missing; expected delete or set_state"
        elif error["type"] == "extra_forbidden" and (other := _other_actions_key(error["loc"])):
            msg = (
                f"a {other[0]} rule takes no `{error['loc'][-1]}` (a {other[1]} rule's key): "
                f"remove it, or make the rule `action: {other[1]}`"
            )
        elif error["type"] == "extra_forbidden":
            # Maybe a newer flowsync's (a guard, a limit): dropping it would widen the policy.
            msg = (
                f"unknown key to flowsync {__version__}: check its spelling (see `flowsync "
                "policy schema`), or upgrade flowsync if a newer version added it"
            )
        elif error["type"] == "string_type" and isinstance(error.get("input"), bool):
            word = "true" if error["input"] else "false"
            msg = (
                f'YAML reads this unquoted word as the boolean {word}; quote it (e.g. name: "off")'
            )
        elif error["type"] == "string_type" and isinstance(error.get("input"), (int, float, date)):
            what = "a date" if isinstance(error["input"], date) else "a number"
            field = next((p for p in reversed(error["loc"]) if isinstance(p, str)), "name")
            msg = (
                f"YAML reads this unquoted value as {what}; quote it "
                f'(e.g. {field}: "{error["input"]}")'
            )
        else:
            msg = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" + (f" (line {at})" if at else ""))
    return lines


def parse_policy(data: bytes, source: str) -> LoadedPolicy:
    """Validate policy bytes (YAML or JSON); ``source`` names them in errors."""
    try:
        raw = yaml.load(
            data, Loader=_UniqueKeyLoader
        )  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PolicyError(
            f"{source}: YAML syntax error{where}: {problem}. Fix the file and run again."
        ) from e
    except RecursionError:  # PyYAML reads nested lists and mappings recursively
        raise PolicyError(
            f"{source}: YAML nested too deeply to read (lists or mappings inside each other "
            "hundreds of levels down); a policy is a few levels deep. Fix the file and run again."
        ) from None
    if raw is None:
        raise PolicyError(
            f"{source} is empty; a policy needs at least `version: 1` and `rules:` "
            "(see docs/examples/retention.yaml or `flowsync policy schema`)."
        )
    if not isinstance(raw, dict):
        kind = {list: "a list", str: "a plain string", int: "a number", float: "a number"}.get(
            type(raw), type(raw).__name__
        )
        raise PolicyError(
            f"{source}: a policy is a YAML mapping with version, rules, ...; this file holds {kind}. "
            "See `flowsync policy schema`."
        )
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as e:
        root = yaml.compose(
            data, Loader=_UniqueKeyLoader
        )  # parsed fine above: only for line numbers
        problems = format_errors(e, root)
        if len(problems) == 1:
            raise PolicyError(f"{source} is not a valid policy: {problems[0]}") from e
        # the line says which file; the CLI prints a line a field under it
        raise PolicyError(
            f"{source} is not a valid policy ({len(problems)} problems):",
            hint="\n".join(f"- {p}" for p in problems),
        ) from e
    return LoadedPolicy(policy, source, hashlib.sha256(data).hexdigest())


def load_policy(path: Path) -> LoadedPolicy:
    if not isinstance(path, (str, os.PathLike)):
        raise PolicyError(
            f"policy {path!r} is not a path: pass the policy file's path as text or a pathlib.Path."
        )
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise PolicyError(f"Policy file {path} does not exist; check the path.") from e
    except OSError as e:
        raise PolicyError(f"Cannot read policy file {path}: {e.strerror}.") from e
    return parse_policy(data, str(path))


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, for editors (yaml-language-server)."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
