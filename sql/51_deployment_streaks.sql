-- deployment_streaks: one row per deployment with live finished runs
-- (COMPLETED, FAILED or CRASHED; cancelled runs are skipped), ordered by
-- (run_at, id) as in failure_recoveries: runs with the same run_at (two
-- schedules at one time) go by id, so both views agree on which is latest.
-- failing_streak = how many of its most recent finished runs failed
-- in a row (the failures after its last success; 0 when the latest one
-- completed); "broken" means failing_streak >= N for the N you choose
-- (`flowsync report flaky --last N`). failing_since = run_at of the first of
-- those failures; latest_failure_run_id, latest_state_type, latest_message =
-- the latest of them. Two hash aggregates, no window sort, so the on-call
-- figures (unresolved_failures) stay fast on millions of runs.
CREATE OR REPLACE VIEW deployment_streaks AS
WITH runs AS (
    SELECT
        deployment_id,
        count(*) AS finished_runs,
        arg_max(state_type, (run_at, id)) AS last_state_type,
        max(run_at) FILTER (WHERE NOT is_failure) AS last_success_at,
        max((run_at, id)) FILTER (WHERE NOT is_failure) AS last_success,
        max(run_at) FILTER (WHERE is_failure) AS last_failure_at
    FROM flow_run_measures
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
    GROUP BY deployment_id
), open AS (
    SELECT
        m.deployment_id,
        count(*) AS failing_streak,
        min(m.run_at) AS failing_since,
        arg_max(m.id, (m.run_at, m.id)) AS latest_failure_run_id,
        arg_max(m.state_type, (m.run_at, m.id)) AS latest_state_type,
        arg_max(m.state_message, (m.run_at, m.id)) AS latest_message
    FROM flow_run_measures AS m
    JOIN runs AS r ON r.deployment_id = m.deployment_id
    WHERE NOT m.is_deleted AND m.is_failure AND (r.last_success IS NULL OR (m.run_at, m.id) > r.last_success)
    GROUP BY m.deployment_id
)
SELECT
    r.deployment_id,
    f.name AS flow_name,
    d.name AS deployment_name,
    r.finished_runs,
    coalesce(o.failing_streak, 0) AS failing_streak,
    o.failing_since,
    r.last_state_type,
    r.last_success_at,
    r.last_failure_at,
    o.latest_failure_run_id,
    o.latest_state_type,
    o.latest_message
FROM runs AS r
LEFT JOIN open AS o ON o.deployment_id = r.deployment_id
LEFT JOIN deployments AS d ON d.id = r.deployment_id
LEFT JOIN flows AS f ON f.id = d.flow_id;
