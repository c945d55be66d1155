-- retried_runs: one row per live flow run that needed more than one attempt
-- (run_count > 1), with its final state: a COMPLETED row is a run that
-- succeeded only after retries.
CREATE OR REPLACE VIEW retried_runs AS
SELECT
    id,
    name,
    flow_id,
    flow_name,
    deployment_id,
    deployment_name,
    run_count,
    state_type,
    run_at,
    duration_s
FROM flow_runs_enriched
WHERE NOT is_deleted AND is_retried;
