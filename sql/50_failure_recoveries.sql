-- failure_recoveries: one row per failure episode of a deployment: a run of
-- consecutive failed finished runs (FAILED or CRASHED, in (run_at, id) order:
-- runs with the same run_at go by id, as in deployment_streaks; cancelled runs
-- skipped), over live runs. recovered_at is the run_at of the
-- next COMPLETED run (NULL while still failing: that episode's failed_runs is
-- the deployment's current failing streak); recovery_s = recovered_at -
-- failed_at, the time from the first failure to the next success (MTTR is
-- its mean).
CREATE OR REPLACE VIEW failure_recoveries AS
WITH finished AS (
    SELECT
        deployment_id,
        run_at,
        is_failure,
        -- The running count of successes only moves on a success, so the
        -- failures of one episode share it, and the success that ends the
        -- episode has it + 1. Both windows share one sort.
        sum(CASE WHEN is_failure THEN 0 ELSE 1 END) OVER w AS block,
        lag(is_failure) OVER w AS after_failure
    FROM flow_run_measures
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
    WINDOW w AS (PARTITION BY deployment_id ORDER BY run_at, id ROWS UNBOUNDED PRECEDING)
),
episodes AS (
    -- Only failures and the successes that end an episode: no self-join.
    SELECT
        deployment_id,
        CASE WHEN is_failure THEN block ELSE block - 1 END AS episode,
        min(run_at) FILTER (WHERE is_failure) AS failed_at,
        count(*) FILTER (WHERE is_failure) AS failed_runs,
        min(run_at) FILTER (WHERE NOT is_failure) AS recovered_at
    FROM finished
    WHERE is_failure OR after_failure
    GROUP BY ALL
)
SELECT
    e.deployment_id,
    f.name AS flow_name,
    d.name AS deployment_name,
    e.failed_at,
    e.failed_runs,
    e.recovered_at,
    epoch(e.recovered_at - e.failed_at) AS recovery_s
FROM episodes AS e
LEFT JOIN deployments AS d ON d.id = e.deployment_id
LEFT JOIN flows AS f ON f.id = d.flow_id;
