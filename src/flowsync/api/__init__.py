"""The Prefect REST API, spoken over HTTP. The only package that imports httpx."""

from flowsync.api.budget import RequestBudget
from flowsync.api.client import (
    Capabilities,
    DeleteResult,
    OrchestrationResult,
    Page,
    PrefectClient,
    RetryPolicy,
    RunRetention,
)

__all__ = [
    "Capabilities",
    "DeleteResult",
    "OrchestrationResult",
    "Page",
    "PrefectClient",
    "RequestBudget",
    "RetryPolicy",
    "RunRetention",
]
