"""The Prefect REST API, spoken over HTTP. The only package that imports httpx."""

from flowsync.api.budget import RequestBudget
from flowsync.api.client import Page, PrefectClient, RetryPolicy
from flowsync.api.models import Capabilities, DeleteResult, OrchestrationResult, RunRetention

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
