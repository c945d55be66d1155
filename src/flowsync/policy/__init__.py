"""Policies: a reviewed YAML file of rules, planned over the local file, applied in bulk.

``model`` validates the file, ``rulesql`` checks and runs a rule's SQL on a
sandbox, ``plan`` decides purely from the DuckDB file what
each rule would touch, ``apply`` re-checks each batch against the server, sends
it and classifies every run once (``result``).
Must not: print or import typer/rich/httpx/duckdb.
"""

from flowsync.policy.apply import apply_plan
from flowsync.policy.model import LoadedPolicy, Policy, load_policy, parse_policy, policy_schema
from flowsync.policy.plan import Plan, make_plan
from flowsync.policy.result import ApplyResult, Outcome
from flowsync.policy.rulesql import check_rules

__all__ = [
    "ApplyResult",
    "LoadedPolicy",
    "Outcome",
    "Plan",
    "Policy",
    "apply_plan",
    "check_rules",
    "load_policy",
    "make_plan",
    "parse_policy",
    "policy_schema",
]
