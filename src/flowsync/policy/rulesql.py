"""Rule SQL: checked, classified and run on a sandbox, every failure a PolicyError.

Owns: the checks a rule's SQL passes before it is run (exactly one SELECT with an
``id`` column, only functions that compute: an allow list built from DuckDB's own
catalog), telling a rule that decides each run from its own row from one that reads
other runs (``reads_other_runs``), and running SQL built around a rule's statement
(``rule_rows``) under its time limit, read-only or in a transaction always rolled
back, every failure a PolicyError naming the rule. Must not: decide what a policy
does (that is ``policy/plan.py``), call the API, or print.

Rule SQL runs only on a ``Sandbox`` (files, network and extensions off, settings
locked, spill capped: every function here that runs it takes one), may call only
functions that compute (no side effects, no sequences, no SQL text, no randomness,
a few harmless table functions, the file's own macros), and runs under a time limit
per rule.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flowsync.errors import PolicyError, QueryError, QueryTimeoutError, SandboxError, StoreError
from flowsync.policy.model import LoadedPolicy
from flowsync.policy.planned import RuleModel
from flowsync.store import Sandbox, Store

# Never, whatever DuckDB's catalog says of them: they change state (sequences), run SQL
# text built at run time, sleep, or log.
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "currval",
        "query",
        "query_table",
        "json_execute_serialized_sql",
        "sleep_ms",
        "pg_sleep",
        "write_log",
    }
)
# Table functions that only compute; every other one (read_csv, checkpoint, duckdb_*...) is refused.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "json_each", "json_tree", "repeat"}
)
# What a macro of the file may call besides: flowsync's grouped figures (``named_groups``,
# sql/12_grouped_runs.sql) read the table or CTE named by their argument, which on the
# sandbox is one of the file's.
MACRO_TABLE_FUNCTIONS = frozenset({"query_table"})
# Rule SQL's time limit when the policy does not set one (seconds).
DEFAULT_RULE_TIMEOUT = 60.0

_FUNCTIONS_SQL = """
SELECT lower(function_name), function_type, internal, coalesce(has_side_effects, false),
       lower(coalesce(macro_definition, '')), schema_name
FROM duckdb_functions()
"""


@dataclass(frozen=True)
class Functions:
    """What the checks of rule SQL need of the functions of this DuckDB and of the file,
    from one listing of its ~3,000 functions (~30 ms; read once a plan, not three times
    a rule)."""

    allowed: frozenset[str]  # every function rule SQL may call (the allow list)
    aggregates: frozenset[str]  # aggregate or window functions, and macros calling one
    reading_macros: frozenset[str]  # scalar macros that read a table, or call one that does


# Listings already turned into ``Functions`` in this process: what they hold depends only
# on the listing (and this DuckDB's parser), and the listing's Python work is ~3x its query.
_KNOWN: dict[tuple[tuple[Any, ...], ...], Functions] = {}


def functions(store: Store) -> Functions:
    """``Functions`` from this DuckDB's own catalog and the file's macros."""
    listing = tuple(store.execute(_FUNCTIONS_SQL).rows())
    known = _KNOWN.get(listing)
    if known is None:
        known = _functions_of(store, listing)
        if len(_KNOWN) >= 8:  # a long-lived process planning over many files
            _KNOWN.clear()
        _KNOWN[listing] = known
    return known


def _functions_of(store: Store, listing: tuple[tuple[Any, ...], ...]) -> Functions:
    side_effects = re.compile(
        r"\b("
        + "|".join(sorted(FORBIDDEN_FUNCTIONS | {"random", "uuid", "setseed", "error"}))
        + r")\b"
    )
    allowed: set[str] = set()
    kinds: dict[str, set[str]] = {}
    bodies: dict[str, str] = {}
    scalar_macros: dict[str, str] = {}  # every scalar macro, DuckDB's own too -> its body
    mine: dict[str, set[str]] = {}  # the file's own macros -> the functions their bodies call
    for name, kind, internal, effects, body, schema in listing:
        kinds.setdefault(name, set()).add(kind)
        if kind == "macro":
            scalar_macros[name] = body
        if internal:
            if (kind in ("scalar", "aggregate", "window") and not effects) or (
                kind == "macro" and not side_effects.search(body)
            ):
                allowed.add(name)
        elif kind in ("macro", "table_macro"):
            if schema == "main":
                mine.setdefault(name, set()).update(_called(store, kind, body))
            if kind == "macro":
                bodies[name] = body
    allowed = allowed - FORBIDDEN_FUNCTIONS | ALLOWED_TABLE_FUNCTIONS
    # The file's macros that call only allowed functions (other such macros too, however
    # deep): one wrapping random() or nextval() is refused as those are.
    may_call = allowed | MACRO_TABLE_FUNCTIONS
    while True:
        computing = {n for n, calls in mine.items() if n not in allowed and calls <= may_call}
        if not computing:
            break
        allowed |= computing
        may_call |= computing
    return Functions(
        allowed=frozenset(allowed),
        aggregates=_aggregating(kinds, scalar_macros),
        reading_macros=_reading(bodies),
    )


def _aggregating(kinds: dict[str, set[str]], macros: dict[str, str]) -> frozenset[str]:
    """Names whose call may read other rows: an aggregate or window function (also when the
    name is a table macro too: ``histogram``), and the scalar macros whose body calls one,
    DuckDB's own (``json_group_array`` is ``string_agg``, ``weighted_avg`` ``sum``) and the
    file's, however deep."""
    found = {n for n, k in kinds.items() if k & {"aggregate", "window"}}
    while True:
        calls = re.compile(
            r"\b(" + "|".join(map(re.escape, sorted(found, key=len, reverse=True))) + r")\s*\(",
            re.IGNORECASE,
        )
        more = {n for n, body in macros.items() if n not in found and calls.search(body)}
        if not more:
            return frozenset(found)
        found |= more


def _called(store: Store, kind: str, body: str) -> set[str]:
    """The functions a macro's body calls (one that does not parse calls something unknown)."""
    try:
        return store.functions_called(body if kind == "table_macro" else f"SELECT {body}")
    except QueryError:
        return {"?"}


# Tables a run's own row comes from (one reference), and the lookups joined to it.
RUN_TABLES = frozenset({"flow_runs", "flow_run_measures", "flow_runs_enriched"})
LOOKUP_TABLES = frozenset({"flows", "deployments"})


def _reading(bodies: dict[str, str]) -> frozenset[str]:
    """The scalar macros (name -> body; a user's own too) whose body reads a table, or
    calls a macro that does: a call to one may read any run, flow or deployment."""
    reading = {n for n, body in bodies.items() if re.search(r"\b(from|join)\b", body)}
    while True:  # and the macros that call those, however deep
        calling = {
            n
            for n, body in bodies.items()
            if n not in reading and any(re.search(rf"\b{re.escape(r)}\s*\(", body) for r in reading)
        }
        if not calling:
            return frozenset(reading)
        reading |= calling


# Tables and views of the file that hold no flow or deployment row: a rule reading only
# these decides without them.
RUN_ONLY_TABLES = frozenset({"flow_runs", "flow_run_measures"})


@dataclass(frozen=True)
class RuleReads:
    """What a rule's SQL may decide a run from besides its own row: why it may read other
    runs (None: it does not), and which of ``flows`` and ``deployments`` it may read."""

    other_runs: str | None
    lookups: frozenset[str]


def rule_reads(store: Store, sql: str, known: Functions) -> RuleReads:
    """``RuleReads`` of a rule's SQL, from one walk of DuckDB's parse tree.

    Its own row only: one reference to flow_runs (or the row-by-row views over it),
    joined at most to flows and deployments, with no subquery, CTE, set operation,
    window, aggregate, table function, LIMIT/OFFSET, DISTINCT ON, sample or macro that
    reads tables (each of these keeps or drops a run by the rows beside it). Anything
    else may look at other runs. The lookups: the tables it names, and both for a view,
    table macro or table-reading macro that may join them (``flow_runs_enriched``...)."""
    run_refs = 0
    why: list[str] = []
    lookups: set[str] = set()

    def walk(node: Any) -> None:
        nonlocal run_refs
        if isinstance(node, list):
            for value in node:
                walk(value)
            return
        if not isinstance(node, dict):
            return
        kind, cls = node.get("type"), node.get("class")
        function = node.get("function_name")
        function = function.lower() if isinstance(function, str) else ""
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            if name in RUN_TABLES:
                run_refs += 1
            elif name not in LOOKUP_TABLES:
                why.append(f"reads {name}")
            if name in LOOKUP_TABLES:
                lookups.add(name)
            elif name not in RUN_ONLY_TABLES:
                lookups.update(LOOKUP_TABLES)
        elif kind in ("SUBQUERY", "TABLE_FUNCTION") or cls == "SUBQUERY":
            why.append("a subquery" if "SUBQUERY" in (kind, cls) else "a table function")
            if kind == "TABLE_FUNCTION":
                lookups.update(LOOKUP_TABLES)
        elif kind == "SET_OPERATION_NODE":
            why.append("a set operation")
        elif cls == "WINDOW":
            why.append("a window function")
        elif function in known.reading_macros:  # (first: it may read flows, deployments)
            why.append(f"a macro that reads tables ({node['function_name']})")
            lookups.update(LOOKUP_TABLES)
        elif function in known.aggregates:
            why.append(f"an aggregate ({node['function_name']})")
        if (node.get("cte_map") or {}).get("map"):
            why.append("a CTE")
        if node.get("group_expressions") or node.get("having"):
            why.append("GROUP BY")
        if node.get("sample"):
            why.append("a sample")
        for modifier in node.get("modifiers") or []:
            if modifier.get("type") == "LIMIT_MODIFIER":
                why.append("LIMIT/OFFSET")
            elif modifier.get("type") == "DISTINCT_MODIFIER" and modifier.get(
                "distinct_on_targets"
            ):
                why.append("DISTINCT ON")
        for value in node.values():
            walk(value)

    walk(store.parse_tree(sql))
    if run_refs > 1:
        why.append("flow_runs more than once")
    return RuleReads(", ".join(dict.fromkeys(why)) or None, frozenset(lookups))


def reads_other_runs(store: Store, sql: str) -> str | None:
    """Why a rule's SQL decides a run from other runs' rows (None: from its own row only)."""
    return rule_reads(store, sql, functions(store)).other_runs


def reads_lookups(store: Store, sql: str) -> frozenset[str]:
    """Which of ``flows`` and ``deployments`` a rule's SQL may read (empty: runs only)."""
    return rule_reads(store, sql, functions(store)).lookups


def _sandbox_error(rule: RuleModel, e: SandboxError) -> PolicyError:
    return PolicyError(
        f"rule {rule.name!r} tried to reach outside the history ({e.detail}): rule SQL runs with files, "
        "network and extensions off; query only the tables and views of the file."
    )


@contextlib.contextmanager
def rule_errors(rule: RuleModel, hint: str) -> Iterator[None]:
    """Every failure of SQL built around a rule's statement, as a PolicyError naming the rule."""
    try:
        yield
    except SandboxError as e:
        raise _sandbox_error(rule, e) from e
    except QueryTimeoutError as e:
        raise PolicyError(
            f"rule {rule.name!r}: its SQL ran longer than {e.seconds:g}s and was stopped; "
            "make it cheaper, or raise rule_timeout_seconds in the policy (or --rule-timeout)."
        ) from e
    except QueryError as e:
        failed = PolicyError(f"rule {rule.name!r}: SQL failed: {e.detail}. {hint}")
        failed.hint = e.hint  # DuckDB's own help (did you mean, candidates), under the line
        raise failed from e
    except StoreError as e:
        if isinstance(e, QueryError) or "memory" not in str(e):
            raise
        raise PolicyError(
            f"rule {rule.name!r}: its SQL needed more memory and disk than rule SQL may use "
            "(DuckDB's memory cap, 1 GiB of spill); make it cheaper."
        ) from e


def sandboxed(store: Sandbox) -> contextlib.AbstractContextManager[None]:
    """Where rule SQL runs: as is on a read-only store, in a transaction always rolled back
    on a writable one."""
    return contextlib.nullcontext() if store.read_only else store.discarded()


def rule_rows(
    store: Sandbox,
    rule: RuleModel,
    sql: str,
    params: list[Any] | dict[str, Any] | None = None,
    hint: str = "The id column must hold flow-run ids (UUIDs).",
    timeout: float | None = DEFAULT_RULE_TIMEOUT,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run SQL built around a rule's statement; every failure is a PolicyError naming the rule.

    On a writable store it runs in a transaction that is always rolled back."""
    with rule_errors(rule, hint), sandboxed(store):
        return store.execute(sql, params, timeout=timeout).dicts()


# DuckDB's name for a second (third...) result column called id.
_RENAMED_ID = re.compile(r"^id_\d+$", re.IGNORECASE)


def rule_statement(
    store: Sandbox,
    rule: RuleModel,
    known: Functions,
    timeout: float | None = DEFAULT_RULE_TIMEOUT,
) -> str:
    """The rule's SQL as one SELECT statement with an ``id`` column, or PolicyError
    (``known``: the store's ``functions``)."""
    where = f"rule {rule.name!r}"
    try:
        parsed = store.statements(rule.sql)
    except QueryError as e:
        raise PolicyError(f"{where}: SQL does not parse: {e.detail}. Fix the rule's sql.") from e
    if len(parsed) != 1:
        raise PolicyError(
            f"{where}: sql holds {len(parsed)} statements; a rule is exactly one SELECT."
        )
    kind, text = parsed[0]
    if kind != "SELECT":
        raise PolicyError(
            f"{where}: sql is a {kind} statement; a rule is one read-only SELECT returning an id column."
        )
    sql = text.strip().rstrip(";").strip()
    try:
        forbidden = sorted(store.functions_called(sql) - known.allowed)
    except QueryError as e:
        raise PolicyError(f"{where}: SQL does not parse: {e.detail}. Fix the rule's sql.") from e
    if forbidden:
        raise PolicyError(
            f"{where}: sql calls {', '.join(forbidden)}, which rule SQL may not use: only functions "
            "that compute (no side effects, sequences, SQL text, randomness, files). "
            "Select from the tables and views directly."
        )
    columns, _ = rule_rows(
        store,
        rule,
        f"SELECT * FROM (\n{sql}\n) AS rule_rows LIMIT 0",
        hint="Try it with `flowsync sql`.",
        timeout=timeout,
    )
    if "id" not in columns:
        raise PolicyError(
            f"{where}: SQL returns columns {columns}, not an `id` column of flow-run ids; "
            "select e.g. `SELECT id FROM flow_runs WHERE ...`."
        )
    renamed = [c for c in columns if _RENAMED_ID.match(c)]
    if renamed:  # two columns named id: DuckDB renames the later ones, and the first is taken
        raise PolicyError(
            f"{where}: SQL returns a column `id` and {', '.join(f'`{c}`' for c in renamed)}, "
            "DuckDB's name for another column called id (a SELECT * over a join, or two ids "
            "selected), so which holds the runs to act on is unclear; select the run ids alone "
            "as `id` (e.g. SELECT r.id FROM flow_runs r JOIN ...) and name any other column "
            "apart."
        )
    return sql


def check_rules(
    store: Sandbox, loaded: LoadedPolicy, timeout: float | None = None
) -> dict[str, int]:
    """Run every rule's SQL (read-only); rule name -> non-null ids returned."""
    limit = timeout or loaded.policy.rule_timeout_seconds
    counts = {}
    known = functions(store)
    for rule in loaded.policy.rules:
        sql = rule_statement(store, rule, known, limit)
        _, rows = rule_rows(
            store,
            rule,
            f"SELECT count(CAST(id AS UUID)) AS n FROM (\n{sql}\n) AS rule_rows",
            timeout=limit,
        )
        counts[rule.name] = int(rows[0]["n"])
    return counts
