-- flaky_deployments(since, until, last_n, min_rate := 0.05, only_flows, only_deployments):
-- a table macro (only_*: see 06_run_selected.sql), one row per
-- deployment with live failures or retried runs in [since, until), or a
-- failing streak of at least `last_n`:
--   runs, failed, failure_rate  as failure_rates('deployment', ...)
--   retried_runs     runs in the window that needed more than one attempt
--   failing_streak   latest finished runs that failed in a row (all history,
--                    deployment_streaks); broken = failing_streak >= last_n
--   flaky            not broken, and either it failed and recovered by itself
--                    at least twice in the window (recovered_episodes >= 2) at a
--                    failure rate of at least min_rate, or at least min_rate of
--                    its runs (and two or more) needed a retry: failures that
--                    come and go, often enough to matter (a rare failure, or
--                    one long outage, is not flaky)
--   failure_episodes, mttr_s  failure episodes that started in the window and
--                    their mean time to the next success (failure_recoveries)
--   recovered_episodes  of those, the ones that ended with a success
--   last_state_type, last_success_at, last_failure_at  (deployment_streaks)
CREATE OR REPLACE MACRO flaky_deployments(
    since, until, last_n, min_rate := 0.05, only_flows := NULL, only_deployments := NULL
) AS TABLE
WITH rates AS (
    SELECT deployment_id, runs, failed, failure_rate
    FROM failure_rates('deployment', since, until, since, false)
    WHERE deployment_id IS NOT NULL
), retried AS (
    SELECT deployment_id, count(*) AS retried_runs
    FROM retried_runs
    WHERE deployment_id IS NOT NULL AND run_at >= since AND run_at < until
    GROUP BY deployment_id
), episodes AS (
    SELECT deployment_id, count(*) AS failure_episodes, avg(recovery_s) AS mttr_s,
        count(recovered_at) AS recovered_episodes
    FROM failure_recoveries
    WHERE failed_at >= since AND failed_at < until
    GROUP BY deployment_id
), keys AS (
    SELECT deployment_id FROM rates
    UNION SELECT deployment_id FROM retried
    UNION SELECT deployment_id FROM deployment_streaks
)
SELECT
    k.deployment_id, f.name AS flow_name, d.name AS deployment_name,
    coalesce(r.runs, 0) AS runs,
    coalesce(r.failed, 0) AS failed,
    r.failure_rate,
    coalesce(t.retried_runs, 0) AS retried_runs,
    coalesce(s.failing_streak, 0) AS failing_streak,
    coalesce(s.failing_streak, 0) >= last_n AS broken,
    coalesce(s.failing_streak, 0) < last_n AND (
        (coalesce(e.recovered_episodes, 0) >= 2 AND coalesce(r.failure_rate, 0) >= min_rate)
        OR (coalesce(t.retried_runs, 0) >= 2
            AND coalesce(t.retried_runs, 0) >= min_rate * coalesce(r.runs, 0))
    ) AS flaky,
    coalesce(e.failure_episodes, 0) AS failure_episodes,
    coalesce(e.recovered_episodes, 0) AS recovered_episodes,
    e.mttr_s,
    s.last_state_type, s.last_success_at, s.last_failure_at
FROM keys AS k
LEFT JOIN rates AS r ON r.deployment_id = k.deployment_id
LEFT JOIN retried AS t ON t.deployment_id = k.deployment_id
LEFT JOIN episodes AS e ON e.deployment_id = k.deployment_id
LEFT JOIN deployment_streaks AS s ON s.deployment_id = k.deployment_id
LEFT JOIN deployments AS d ON d.id = k.deployment_id
LEFT JOIN flows AS f ON f.id = d.flow_id
WHERE (coalesce(r.failed, 0) > 0 OR coalesce(t.retried_runs, 0) > 0 OR coalesce(s.failing_streak, 0) >= last_n)
    AND run_selected(d.flow_id, k.deployment_id, NULL, NULL, only_flows, only_deployments, NULL, NULL);
