"""Policy files: validation, error messages, the JSON Schema, `flowsync policy check`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import flowsync
from flowsync.errors import PolicyError
from flowsync.policy import load_policy, parse_policy, policy_schema
from flowsync.policy.model import DeleteRule, SetStateRule
from tests.helpers import run_cli

EXAMPLES = sorted((Path(__file__).parent.parent / "docs" / "examples").glob("*.yaml"))

BRIEF = b"""
version: 1
max_actions: 1000
protect_tags: [keep]
rules:
  - name: purge-completed-after-30d
    action: delete
    sql: |
      SELECT id FROM flow_runs
      WHERE deleted_at IS NULL AND state_type = 'COMPLETED'
        AND end_time < now() - INTERVAL 30 DAY
  - name: cancel-stale-scheduled
    action: set_state
    state: {type: CANCELLED, name: Cancelled, message: "stale for 7 days"}
    force: false
    sql: |
      SELECT id FROM flow_runs
      WHERE deleted_at IS NULL AND state_type = 'SCHEDULED'
        AND expected_start_time < now() - INTERVAL 7 DAY
"""


def test_the_documented_policy_parses() -> None:
    loaded = parse_policy(BRIEF, "p.yaml")
    delete, set_state = loaded.policy.rules
    assert isinstance(delete, DeleteRule) and isinstance(set_state, SetStateRule)
    assert set_state.state.to_api() == {
        "type": "CANCELLED",
        "name": "Cancelled",
        "message": "stale for 7 days",
    }
    assert loaded.policy.protect_tags == ["keep"]
    assert len(loaded.sha256) == 64


def test_defaults() -> None:
    loaded = parse_policy(
        b"version: 1\nrules: [{name: a, action: delete, sql: SELECT 1 AS id}]", "p"
    )
    assert loaded.policy.max_actions == 1000
    assert loaded.policy.protect_tags == []
    rule = loaded.policy.rules[0]
    assert (rule.enabled, rule.limit, rule.keep_newest) == (True, None, None)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    assert load_policy(path).policy.rules
    result = run_cli("policy", "check", str(path))
    assert result.exit_code == 0, result.output


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


RULE = "{name: r, action: delete, sql: SELECT id FROM flow_runs}"

BAD = [
    (
        "unknown top-level key",
        f"version: 1\nmax_action: 5\nrules: [{RULE}]",
        "max_action: unknown key",
    ),
    (
        "unknown rule key",
        "version: 1\nrules: [{name: r, action: delete, sql: x, where: y}]",
        "rules[0].where: unknown key",
    ),
    (
        "unknown action",
        f"version: 1\nrules: [{RULE}, {{name: s, action: nuke, sql: x}}]",
        "rules[1].action: unknown action 'nuke'",
    ),
    ("missing action", "version: 1\nrules: [{name: r, sql: x}]", "rules[0].action: missing"),
    (
        "missing state",
        "version: 1\nrules: [{name: r, action: set_state, sql: x}]",
        "rules[0].state: Field required",
    ),
    (
        "bad state type",
        "version: 1\nrules: [{name: r, action: set_state, sql: x, state: {type: DONE}}]",
        "rules[0].state.type:",
    ),
    (
        "state on delete",
        "version: 1\nrules: [{name: r, action: delete, sql: x, state: {type: CANCELLED}}]",
        "rules[0].state: a delete rule takes no `state`",
    ),
    ("wrong version", f"version: 2\nrules: [{RULE}]", "version: 2 is a newer policy format than"),
    ("no rules", "version: 1\nrules: []", "rules: List should have at least 1 item"),
    ("duplicate rule names", f"version: 1\nrules: [{RULE}, {RULE}]", "rule name 'r' is used twice"),
    (
        "negative limit",
        "version: 1\nrules: [{name: r, action: delete, sql: x, limit: 0}]",
        "rules[0].limit:",
    ),
    ("bad max_actions", f"version: 1\nmax_actions: 0\nrules: [{RULE}]", "max_actions:"),
    (
        "bad rule name",
        "version: 1\nrules: [{name: 'a b', action: delete, sql: x}]",
        "rules[0].name:",
    ),
    (
        "yaml syntax",
        "version: 1\nrules: [{name: r, action: delete, sql: x\n",
        "YAML syntax error at line",
    ),
    ("duplicate yaml key", "version: 1\nversion: 1\nrules: []", "duplicate key 'version'"),
    (
        "not a mapping",
        "- just a list",
        "a policy is a YAML mapping with version, rules, ...; this file holds a list",
    ),
    ("empty file", "", "bad.yaml is empty; a policy needs at least `version: 1` and `rules:`"),
    (
        "a name YAML reads as a boolean",
        "version: 1\nrules: [{name: off, action: delete, sql: x}]",
        'rules[0].name: YAML reads this unquoted word as the boolean false; quote it (e.g. name: "off")',
    ),
    (
        "rule timeout",
        f"version: 1\nrule_timeout_seconds: 0\nrules: [{RULE}]",
        "rule_timeout_seconds:",
    ),
    (  # the bound --rule-timeout and plan(timeout=) have (0.05 passed before)
        "rule timeout under 0.1",
        f"version: 1\nrule_timeout_seconds: 0.05\nrules: [{RULE}]",
        "rule_timeout_seconds: Input should be greater than or equal to 0.1",
    ),
    # Values of another type are refused, not converted (true is not 1, "5" is not 5).
    ("version true", f"version: true\nrules: [{RULE}]", "version: True is not a format version"),
    ("version 1.0", f"version: 1.0\nrules: [{RULE}]", "version: 1.0 is not a format version"),
    ("max_actions true", f"version: 1\nmax_actions: true\nrules: [{RULE}]", "max_actions: Input"),
    (
        "limit as text",
        "version: 1\nrules: [{name: r, action: delete, sql: x, limit: '5'}]",
        "rules[0].limit: Input should be a valid integer",
    ),
    (
        "enabled as text",
        "version: 1\nrules: [{name: r, action: delete, sql: x, enabled: 'off'}]",
        "rules[0].enabled: Input should be a valid boolean",
    ),
    ("tag as a number", f"version: 1\nprotect_tags: [7]\nrules: [{RULE}]", "protect_tags[0]:"),
    (
        "a key YAML reads as a number",
        f"version: 1\n1: x\nrules: [{RULE}]",
        "YAML syntax error at line 2, column 1: a key that is not text (1); policy keys are "
        "names such as version, rules or sql: quote it or check its spelling",
    ),
    (
        "a key YAML reads as a boolean",
        f"version: 1\nrules: [{RULE}]\non: x",
        "YAML syntax error at line 3, column 1: a key that is not text (on);",
    ),
    (
        "an empty key",
        f"version: 1\n~: x\nrules: [{RULE}]",
        "YAML syntax error at line 2, column 1: a key that is not text (~);",
    ),
    (
        "a name YAML reads as a number",
        "version: 1\nrules: [{name: 12345, action: delete, sql: x}]",
        'rules[0].name: YAML reads this unquoted value as a number; quote it (e.g. name: "12345")',
    ),
    (
        "a description YAML reads as a date",
        "version: 1\nrules: [{name: r, action: delete, sql: x, description: 2024-01-01}]",
        "rules[0].description: YAML reads this unquoted value as a date; quote it "
        '(e.g. description: "2024-01-01")',
    ),
    (
        "two merge keys in one mapping",
        "version: 1\nrules:\n  - name: r\n    action: delete\n"
        "    <<: {sql: SELECT id FROM flow_runs WHERE false, limit: 1}\n"
        "    <<: {sql: SELECT id FROM flow_runs}\n",
        "YAML syntax error at line 6, column 5: duplicate key '<<' (a second merge silently "
        "replaces keys the first gave): merge once, `<<: [*a, *b]`, where the first wins",
    ),
    (
        "a list as a key",
        "version: 1\nrules: [{name: r, action: delete, sql: x, [a]: 1}]",
        "YAML syntax error at line 2, column 43: a key that is a list or a mapping",
    ),
]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"version: 1\nrequire_approval: true\nrules: [{RULE}]", "require_approval"),
        (
            "version: 1\nrules: [{name: r, action: delete, sql: x, protect_states: [RUNNING]}]",
            "rules[0].protect_states",
        ),
        (
            "version: 1\nrules: [{name: r, action: set_state, sql: x, "
            "state: {type: CANCELLED, only_from: [PENDING]}}]",
            "rules[0].state.only_from",
        ),
    ],
    ids=["top level", "a rule's guard", "the state"],
)
def test_an_unknown_key_a_newer_flowsync_may_know_is_not_to_be_removed(
    text: str, where: str
) -> None:
    """A key this flowsync does not know may be a newer flowsync's guard: removing it to
    get past the refusal would widen what the policy touches. The refusal names this
    version and the upgrade, and never says to remove it."""
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode(), "newer.yaml")
    bullet = str(info.value).split(" is not a valid policy: ", 1)[1]
    assert bullet.startswith(f"{where}: unknown key"), bullet
    assert f"flowsync {flowsync.__version__}" in bullet and "upgrade flowsync" in bullet, bullet
    assert "remove" not in bullet, bullet


def test_yaml_merge_keys_are_read_and_a_key_written_out_overrides() -> None:
    text = (
        "version: 1\n"
        "rules:\n"
        "  - &base {name: a, action: delete, sql: SELECT id FROM flow_runs, limit: 5}\n"
        "  - {<<: *base, name: b, limit: 7}\n"
    )
    rules = parse_policy(text.encode(), "m.yaml").policy.rules
    assert [(r.name, r.limit, r.sql) for r in rules] == [
        ("a", 5, "SELECT id FROM flow_runs"),
        ("b", 7, "SELECT id FROM flow_runs"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD], ids=[n for n, _, _ in BAD]
)
def test_bad_policies_name_the_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode(), "bad.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("bad.yaml")


@pytest.mark.parametrize("nest", ["[]", "{a: }"], ids=["lists", "mappings"])
def test_yaml_nested_past_pythons_recursion_limit_is_one_policy_error(
    tmp_path: Path, nest: str
) -> None:
    """PyYAML reads nesting recursively (frames a level): as many levels as Python's
    recursion limit (2000 were) was a RecursionError traceback. (Not more: PyYAML's scanner
    takes time quadratic in the depth of nested lists.)"""
    opening, closing = nest[:-1], nest[-1]
    levels = sys.getrecursionlimit()
    text = "version: 1\nrules: " + opening * levels + closing * levels + "\n"
    with pytest.raises(PolicyError, match=r"^deep\.yaml: YAML nested too deeply"):
        parse_policy(text.encode(), "deep.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    result = run_cli("policy", "check", str(deep))
    assert result.exit_code == 7 and "nested too deeply" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_key_of_the_other_action_says_so_not_that_it_is_unknown() -> None:
    """`state:` on a delete rule was "unknown key to flowsync 0.1.0: check its spelling, or
    upgrade": the key exists, for set_state rules. Said so; a misspelt key stays unknown."""
    text = (
        b"version: 1\nrules:\n - {name: a, action: delete, sql: SELECT id FROM flow_runs, "
        b"state: {type: CANCELLED}}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert str(info.value) == (
        "p.yaml is not a valid policy: rules[0].state: a delete rule takes no `state` (a "
        "set_state rule's key): remove it, or make the rule `action: set_state` (line 3)"
    )
    with pytest.raises(PolicyError, match=r"rules\[0\]\.stat: unknown key"):
        parse_policy(text.replace(b"state:", b"stat:"), "p.yaml")


def test_one_bullet_per_field() -> None:
    text = b"version: 1\nrules:\n - {name: a, action: nuke, sql: x}\n - {name: b, action: set_state, sql: x, bogus: 1}\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert str(info.value) == "p.yaml is not a valid policy (3 problems):"
    assert [line.split(":")[0] for line in info.value.hint.splitlines()] == [
        "- rules[0].action",
        "- rules[1].state",
        "- rules[1].bogus",
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


def test_cli_check_bad_file_is_one_error_and_exit_7(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules: [{name: r, action: nuke, sql: x}]\n")
    result = run_cli("policy", "check", str(bad))
    assert result.exit_code == 7
    assert "rules[0].action: unknown action 'nuke'" in result.stderr
    assert "Traceback" not in result.output
    missing = run_cli("policy", "check", str(tmp_path / "missing.yaml"))
    assert missing.exit_code == 7 and "does not exist" in missing.stderr


def test_cli_check_of_several_bad_fields_is_one_error_line_and_a_line_a_field(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nrules:\n - {name: a, action: nuke, sql: x}\n"
        " - {name: b, action: set_state, sql: x, bogus: 1}\n"
    )
    result = run_cli("policy", "check", str(bad))
    assert result.exit_code == 7 and "Traceback" not in result.output
    first, *fields = result.stderr.strip().splitlines()
    assert first == f"error: {bad} is not a valid policy (3 problems):", first
    assert [f.split(":")[0] for f in fields] == [
        "  - rules[0].action",
        "  - rules[1].state",
        "  - rules[1].bogus",
    ], fields
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [first]


def test_schema_command_prints_the_json_schema() -> None:
    result = run_cli("policy", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == json.loads(json.dumps(policy_schema()))
    assert set(schema["required"]) == {"version", "rules"}
    assert schema["additionalProperties"] is False
    assert {"DeleteRule", "SetStateRule", "TargetState"} <= set(schema["$defs"])
    assert schema["$defs"]["SetStateRule"]["required"] == ["name", "sql", "action", "state"]


def test_errors_name_the_line() -> None:
    text = (
        b"version: 1\n"
        b"max_actions: 0\n"
        b"rules:\n"
        b"  - name: ok\n"
        b"    action: delete\n"
        b"    sql: SELECT id FROM flow_runs\n"
        b"  - name: bad\n"
        b"    action: set_state\n"
        b"    sql: SELECT id FROM flow_runs\n"
        b"    state:\n"
        b"      type: DONE\n"
        b"    colour: red\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    found = {
        line.split(":")[0].strip(" -"): line.rsplit("(line ", 1)[-1].rstrip(")")
        for line in info.value.hint.splitlines()
    }
    assert found == {"max_actions": "2", "rules[1].state.type": "11", "rules[1].colour": "12"}


@pytest.mark.parametrize(
    ("value", "read_as", "why"),
    [
        ("keep_newest: 010", "8", "octal, for its leading zero"),
        ("limit: 0100", "64", "octal, for its leading zero"),
        ("keep_newest: 1:30", "90", "base 60"),
        ("limit: -1:00", "-60", "base 60"),
    ],
)
def test_a_number_yaml_reads_as_octal_or_base_60_is_refused_not_acted_on(
    tmp_path: Path, value: str, read_as: str, why: str
) -> None:
    """PyYAML reads YAML 1.1: `keep_newest: 010` is 8 (octal) and `1:30` is 90 (base 60),
    whatever a `%YAML 1.2` line says. Taken as read, the rule would keep 8 runs where the
    file shows 10 (and delete the other 2): refused in one line naming the value, its line
    and how to fix it."""
    for header in ("", "%YAML 1.2\n---\n"):
        text = (
            f"{header}version: 1\nrules:\n  - name: r\n    action: delete\n"
            f"    sql: SELECT id FROM flow_runs\n    {value}\n"
        )
        with pytest.raises(PolicyError) as info:
            parse_policy(text.encode(), "octal.yaml")
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        number = value.split(": ")[1]
        assert f"YAML reads the number {number} as {read_as} ({why})" in message, message
        assert "line " in message and "without a leading zero" in message, message
    # on the command line: the same line, exit 7, no traceback
    bad = tmp_path / "octal.yaml"
    bad.write_text(text)
    result = run_cli("policy", "check", str(bad))
    assert result.exit_code == 7, result.output
    assert f"YAML reads the number {number} as {read_as}" in result.stderr
    assert "Traceback" not in result.output
    # numbers YAML 1.1 and 1.2 read alike are read as written
    loaded = parse_policy(
        b"version: 1\nmax_actions: 1_000\n"
        b"rules: [{name: r, action: delete, sql: x, keep_newest: 0, limit: 0x10}]",
        "plain.yaml",
    ).policy
    assert (loaded.max_actions, loaded.rules[0].keep_newest, loaded.rules[0].limit) == (1000, 0, 16)


@pytest.mark.parametrize("key", ["keep_newest", "limit"])
@pytest.mark.parametrize("empty", ["", " # 5, once we agree", " ~", " null"])
def test_a_guard_left_empty_is_refused_not_read_as_no_guard(
    tmp_path: Path, key: str, empty: str
) -> None:
    """YAML reads `keep_newest:` with no value (a placeholder, a number commented out, a
    template variable that was unset) as null. Taken as "no keep_newest", the rule would
    delete the newest runs the line was there to keep: refused in one line naming the key,
    as a missing key is the way to say "none"."""
    text = (
        "version: 1\nrules:\n  - name: purge\n    action: delete\n"
        f"    sql: SELECT id FROM flow_runs\n    {key}:{empty}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode(), "empty.yaml")
    bullet = str(info.value).split(" is not a valid policy: ", 1)[1]
    assert bullet.startswith(f"rules[0].{key}: empty"), bullet
    assert "line 6" in bullet and f"leave `{key}` out" in bullet, bullet
    bad = tmp_path / "empty.yaml"
    bad.write_text(text)
    result = run_cli("policy", "check", str(bad))
    assert result.exit_code == 7 and "Traceback" not in result.output, result.output
    assert f"rules[0].{key}: empty" in result.stderr
    # left out, the rule has none (as before)
    rule = parse_policy(text.replace(f"    {key}:{empty}\n", "").encode(), "ok.yaml").policy.rules[
        0
    ]
    assert (rule.keep_newest, rule.limit) == (None, None)
    # and an editor reading the schema flags it too
    props = policy_schema()["$defs"]["DeleteRule"]["properties"]
    assert props[key]["type"] == "integer" and "anyOf" not in props[key]


@pytest.mark.parametrize("tags", ['[""]', '[keep, "  "]', '["${PROTECT_TAG}", keep]'])
def test_a_protected_tag_that_protects_nothing_is_refused(tmp_path: Path, tags: str) -> None:
    """An empty tag (`"${PROTECT_TAG}"` rendered with the variable unset) or one of spaces
    matches no run: the policy would look guarded and protect nothing. Refused in one line
    naming the entry."""
    text = f"version: 1\nprotect_tags: {tags.replace('${PROTECT_TAG}', '')}\nrules: [{RULE}]\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode(), "tags.yaml")
    bullet = str(info.value).split(" is not a valid policy: ", 1)[1]
    assert bullet.startswith("protect_tags["), bullet
    assert "protects no run" in bullet and "(line 2)" in bullet, bullet
    bad = tmp_path / "tags.yaml"
    bad.write_text(text)
    result = run_cli("policy", "check", str(bad))
    assert result.exit_code == 7 and "Traceback" not in result.output, result.output
    assert parse_policy(
        f"version: 1\nprotect_tags: [keep, 'on call']\nrules: [{RULE}]".encode(), "ok.yaml"
    ).policy.protect_tags == ["keep", "on call"]
