"""The Prefect REST API, spoken over HTTP. The only package that imports httpx."""

from flowsync.api.client import Page, PrefectClient, RetryPolicy

__all__ = ["Page", "PrefectClient", "RetryPolicy"]
