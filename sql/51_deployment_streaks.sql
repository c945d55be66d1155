-- deployment_streaks: one row per deployment with live finished runs
-- (COMPLETED, FAILED or CRASHED; cancelled runs are skipped), ordered by
-- run_at. failing_streak = how many of its most recent finished runs failed
-- in a row (0 when the latest one completed); "broken" means failing_streak >=
-- N for the N you choose (`flowsync report flaky --last N`).
CREATE OR REPLACE VIEW deployment_streaks AS
WITH runs AS (
    SELECT
        deployment_id,
        count(*) AS finished_runs,
        arg_max(state_type, run_at) AS last_state_type,
        max(run_at) FILTER (WHERE NOT is_failure) AS last_success_at,
        max(run_at) FILTER (WHERE is_failure) AS last_failure_at
    FROM flow_run_measures
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
    GROUP BY deployment_id
)
SELECT
    r.deployment_id,
    f.name AS flow_name,
    d.name AS deployment_name,
    r.finished_runs,
    coalesce(open.failed_runs, 0) AS failing_streak,
    r.last_state_type,
    r.last_success_at,
    r.last_failure_at
FROM runs AS r
LEFT JOIN failure_recoveries AS open ON open.deployment_id = r.deployment_id AND open.recovered_at IS NULL
LEFT JOIN deployments AS d ON d.id = r.deployment_id
LEFT JOIN flows AS f ON f.id = d.flow_id;
