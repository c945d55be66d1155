"""Schema changes, as named migrations recorded in ``_flowsync_migrations``.

Owns: the DDL of every table. Each migration runs once, in a transaction with
its record, in order; opening an older file upgrades it. A released migration is
never edited: change the schema by appending ``m00N_...``. A file holding a
migration this list does not know was written by a newer flowsync: ``Store``
refuses to write it (``NewerFileError``) and reads it read-only only. Must not: hold data
logic (that is ``synced_tables``) or views (``views.py``: built from ``sql/``,
brought up to date by every pull).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Migration = Callable[[Any], None]  # takes a duckdb connection
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(con: Any) -> None:
    con.execute(
        """
        CREATE TABLE flows (
            id UUID PRIMARY KEY,
            created TIMESTAMPTZ,
            updated TIMESTAMPTZ,
            name VARCHAR,
            tags VARCHAR[],
            labels JSON,
            extra JSON,
            synced_at TIMESTAMPTZ NOT NULL,
            seen_pull BIGINT,
            deleted_at TIMESTAMPTZ
        );
        CREATE TABLE deployments (
            id UUID PRIMARY KEY,
            created TIMESTAMPTZ,
            updated TIMESTAMPTZ,
            name VARCHAR,
            version VARCHAR,
            description VARCHAR,
            flow_id UUID,
            paused BOOLEAN,
            status VARCHAR,
            schedules JSON,
            concurrency_limit INTEGER,
            global_concurrency_limit JSON,
            concurrency_options JSON,
            job_variables JSON,
            parameters JSON,
            tags VARCHAR[],
            labels JSON,
            work_queue_name VARCHAR,
            work_queue_id UUID,
            work_pool_name VARCHAR,
            last_polled TIMESTAMPTZ,
            parameter_openapi_schema JSON,
            path VARCHAR,
            pull_steps JSON,
            entrypoint VARCHAR,
            storage_document_id UUID,
            infrastructure_document_id UUID,
            created_by JSON,
            updated_by JSON,
            enforce_parameter_schema BOOLEAN,
            extra JSON,
            synced_at TIMESTAMPTZ NOT NULL,
            seen_pull BIGINT,
            deleted_at TIMESTAMPTZ
        );
        CREATE TABLE flow_runs (
            id UUID PRIMARY KEY,
            created TIMESTAMPTZ,
            updated TIMESTAMPTZ,
            name VARCHAR,
            flow_id UUID,
            deployment_id UUID,
            deployment_version VARCHAR,
            work_pool_id UUID,
            work_pool_name VARCHAR,
            work_queue_id UUID,
            work_queue_name VARCHAR,
            flow_version VARCHAR,
            parameters JSON,
            idempotency_key VARCHAR,
            context JSON,
            empirical_policy JSON,
            tags VARCHAR[],
            labels JSON,
            parent_task_run_id UUID,
            state_id UUID,
            state_type VARCHAR,
            state_name VARCHAR,
            state_message VARCHAR,
            state_timestamp TIMESTAMPTZ,
            state_details JSON,
            state_data JSON,
            run_count INTEGER,
            expected_start_time TIMESTAMPTZ,
            next_scheduled_start_time TIMESTAMPTZ,
            start_time TIMESTAMPTZ,
            end_time TIMESTAMPTZ,
            total_run_time DOUBLE,
            estimated_run_time DOUBLE,
            estimated_start_time_delta DOUBLE,
            auto_scheduled BOOLEAN,
            infrastructure_document_id UUID,
            infrastructure_pid VARCHAR,
            created_by JSON,
            job_variables JSON,
            extra JSON,
            synced_at TIMESTAMPTZ NOT NULL,
            seen_pull BIGINT,
            deleted_at TIMESTAMPTZ
        );
        CREATE SEQUENCE sync_runs_id START 1;
        CREATE TABLE sync_runs (
            id BIGINT PRIMARY KEY DEFAULT nextval('sync_runs_id'),
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,          -- running | ok | failed | interrupted
            mode VARCHAR,                     -- full | incremental
            api_url VARCHAR,                  -- credentials masked
            inserted BIGINT DEFAULT 0,
            updated BIGINT DEFAULT 0,
            marked_deleted BIGINT DEFAULT 0,
            requests BIGINT DEFAULT 0,
            retries BIGINT DEFAULT 0,
            error VARCHAR,
            details JSON
        );
        CREATE TABLE sync_state (
            key VARCHAR PRIMARY KEY,
            value JSON NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        """
    )


def pending(applied: set[str]) -> list[tuple[str, Migration]]:
    return [(name, fn) for name, fn in MIGRATIONS if name not in applied]


@migration
def m002_policy_actions(con: Any) -> None:
    # The audit trail of `flowsync apply`: one row per run per batch, written
    # before the API call (outcome 'pending') and updated with the server's answer.
    con.execute(
        """
        CREATE SEQUENCE policy_actions_id START 1;
        CREATE TABLE policy_actions (
            id BIGINT PRIMARY KEY DEFAULT nextval('policy_actions_id'),
            apply_id VARCHAR NOT NULL,        -- one `flowsync apply` invocation
            batch INTEGER NOT NULL,           -- batch number within the apply
            sent_at TIMESTAMPTZ NOT NULL,     -- when the batch was sent
            answered_at TIMESTAMPTZ,          -- when its answer was recorded
            api_url VARCHAR,                  -- credentials masked
            policy_path VARCHAR,
            policy_sha256 VARCHAR NOT NULL,   -- sha256 of the policy file bytes
            rule VARCHAR NOT NULL,
            action VARCHAR NOT NULL,          -- delete | set_state
            requested_state JSON,             -- set_state: the state sent, and force
            flow_run_id UUID NOT NULL,
            state_type_before VARCHAR NOT NULL, -- the guard sent with the call
            outcome VARCHAR NOT NULL,         -- pending | deleted | accepted | rejected | aborted | wait
                                              -- | skipped | gone | failed
            details JSON,                     -- the server's per-run answer, or the error
            run_row JSON                      -- the run's last known row when selected
        );
        """
    )


@migration
def m003_flow_runs_without_primary_key(con: Any) -> None:
    # DuckDB holds a table's primary-key index in memory whole once a write touches it:
    # 49 bytes a run (47 MB at a million runs, 470 MB at ten million), so every pull's
    # memory grew with the history. The id stays unique without it: the one write path
    # (synced_tables.upsert_pages) deduplicates each batch and deletes the rows it
    # replaces in the same transaction, under the one-writer lock.
    con.execute(
        """
        CREATE TABLE flow_runs_m003 AS SELECT * FROM flow_runs;
        DROP TABLE flow_runs;
        ALTER TABLE flow_runs_m003 RENAME TO flow_runs;
        ALTER TABLE flow_runs ALTER COLUMN id SET NOT NULL;
        ALTER TABLE flow_runs ALTER COLUMN synced_at SET NOT NULL;
        """
    )


@migration
def m004_file_versions(con: Any) -> None:
    # Which flowsync wrote the file: `written_by` is the newest version that ever wrote
    # it, `last_written_by` the latest, `schema` its newest migration. An older flowsync
    # meeting a migration it does not know refuses to write (Store.migrate); these rows
    # let it say which version did.
    con.execute(
        """
        CREATE TABLE _flowsync_file (
            key VARCHAR PRIMARY KEY,          -- written_by | last_written_by | schema
            value VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        """
    )


@migration
def m005_error_signatures_seen(con: Any) -> None:
    # When each error signature first failed a run, over all the history the file has
    # seen (deleted runs too): `report errors` reads it for first_seen instead of
    # normalising every old failure message on every report (store/signatures.py
    # fills it at the end of each pull, from the runs that pull wrote).
    con.execute(
        """
        CREATE TABLE error_signatures_seen (
            error_text VARCHAR PRIMARY KEY,   -- error_signature_text(state_message)
            first_seen TIMESTAMPTZ NOT NULL,  -- run_at of its earliest failed run
            first_run_id UUID,                -- that run
            recorded_at TIMESTAMPTZ NOT NULL
        );
        """
    )
