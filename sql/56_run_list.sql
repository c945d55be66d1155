-- run_list(since, until, include_deleted, only_flows, only_deployments,
-- only_tags, only_states): a table macro, one row per flow run in [since,
-- until) that passes the filters (06_run_selected.sql), newest first: when it
-- was meant to start, its flow and deployment, name, state, start, end,
-- duration, its error signature and normalised error (failed runs) and its full
-- state message. `flowsync report runs` (the last N failed runs of a
-- deployment) reads it.
CREATE OR REPLACE MACRO run_list(
    since, until, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
SELECT
    run_at, flow_name, deployment_name, name, state_type, state_name,
    start_time, end_time, duration_s, error_signature, error_text, state_message,
    tags, run_count, id, flow_id, deployment_id
FROM flow_runs_enriched
WHERE run_at >= since AND run_at < until AND (include_deleted OR NOT is_deleted)
    AND run_selected(flow_id, deployment_id, tags, state_type,
        only_flows, only_deployments, only_tags, only_states);
