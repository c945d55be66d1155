"""Policies: a reviewed YAML file of rules, planned over the local file, applied in bulk.

``model`` validates the file, ``plan`` decides purely from the DuckDB file what
each rule would touch, ``apply`` sends the batches and records every answer.
Must not: print or import typer/rich/httpx/duckdb.
"""

from flowsync.policy.apply import ApplyResult, apply_plan
from flowsync.policy.model import LoadedPolicy, Policy, load_policy, parse_policy, policy_schema
from flowsync.policy.plan import Plan, check_rules, make_plan

__all__ = [
    "ApplyResult",
    "LoadedPolicy",
    "Plan",
    "Policy",
    "apply_plan",
    "check_rules",
    "load_policy",
    "make_plan",
    "parse_policy",
    "policy_schema",
]
