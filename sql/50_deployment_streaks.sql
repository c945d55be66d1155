-- deployment_streaks: one row per deployment with live finished runs
-- (COMPLETED, FAILED or CRASHED; cancelled runs are skipped), ordered by
-- run_at. failing_streak = how many of its most recent finished runs failed
-- in a row (0 when the latest one completed); "broken" means failing_streak >=
-- N for the N you choose (`flowsync report flaky --last N`).
CREATE OR REPLACE VIEW deployment_streaks AS
WITH finished AS (
    SELECT
        deployment_id,
        flow_name,
        deployment_name,
        run_at,
        state_type,
        is_failure,
        row_number() OVER (PARTITION BY deployment_id ORDER BY run_at DESC, id DESC) AS recency
    FROM flow_runs_enriched
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
)
SELECT
    deployment_id,
    any_value(flow_name) AS flow_name,
    any_value(deployment_name) AS deployment_name,
    count(*) AS finished_runs,
    coalesce(min(recency) FILTER (WHERE NOT is_failure), count(*) + 1) - 1 AS failing_streak,
    arg_min(state_type, recency) AS last_state_type,
    max(run_at) FILTER (WHERE NOT is_failure) AS last_success_at,
    max(run_at) FILTER (WHERE is_failure) AS last_failure_at
FROM finished
GROUP BY deployment_id;
