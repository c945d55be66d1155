-- unresolved_failures: one row per deployment whose latest finished run
-- (COMPLETED, FAILED or CRASHED; cancelled runs skipped) failed, over live
-- runs: the backlog to work through, as the Prometheus exporter's "failed
-- runs not yet recovered".
--   failing_since          run_at of the first failure since the last success
--                          (the open episode of failure_recoveries)
--   failures_since_success failed runs since then (the failing streak)
--   last_success_at        run_at of its latest COMPLETED run (NULL: never)
--   latest_failure_at, latest_failure_run_id, latest_state_type,
--   latest_signature, latest_error_text, latest_message  its latest failed run
CREATE OR REPLACE VIEW unresolved_failures AS
WITH open AS (
    SELECT deployment_id, failed_at AS failing_since, failed_runs AS failures_since_success
    FROM failure_recoveries
    WHERE recovered_at IS NULL
), latest AS (
    SELECT
        deployment_id,
        max(run_at) AS latest_failure_at,
        arg_max(id, run_at) AS latest_failure_run_id,
        arg_max(state_type, run_at) AS latest_state_type,
        arg_max(error_signature, run_at) AS latest_signature,
        arg_max(error_text, run_at) AS latest_error_text,
        arg_max(state_message, run_at) AS latest_message
    FROM flow_run_measures
    WHERE is_failure AND NOT is_deleted AND deployment_id IS NOT NULL
    GROUP BY deployment_id
)
SELECT
    o.deployment_id,
    s.flow_name,
    s.deployment_name,
    o.failing_since,
    o.failures_since_success,
    s.last_success_at,
    l.latest_failure_at,
    l.latest_failure_run_id,
    l.latest_state_type,
    l.latest_signature,
    l.latest_error_text,
    l.latest_message
FROM open AS o
JOIN deployment_streaks AS s ON s.deployment_id = o.deployment_id
LEFT JOIN latest AS l ON l.deployment_id = o.deployment_id;
