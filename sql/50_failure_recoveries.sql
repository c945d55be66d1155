-- failure_recoveries: one row per failure episode of a deployment: a run of
-- consecutive failed finished runs (FAILED or CRASHED, in run_at order,
-- cancelled runs skipped), over live runs. recovered_at is the run_at of the
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
        -- Runs sharing a block number belong to the same streak: the running
        -- count of successes only moves on a success. One sort, no self-join.
        sum(CASE WHEN is_failure THEN 0 ELSE 1 END) OVER (
            PARTITION BY deployment_id ORDER BY run_at, id ROWS UNBOUNDED PRECEDING
        ) AS block
    FROM flow_run_measures
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
),
blocks AS (
    SELECT
        deployment_id,
        block,
        min(run_at) FILTER (WHERE is_failure) AS failed_at,
        count(*) FILTER (WHERE is_failure) AS failed_runs,
        min(run_at) FILTER (WHERE NOT is_failure) AS success_at
    FROM finished
    GROUP BY deployment_id, block
)
SELECT
    e.deployment_id,
    f.name AS flow_name,
    d.name AS deployment_name,
    e.failed_at,
    e.failed_runs,
    s.success_at AS recovered_at,
    epoch(s.success_at - e.failed_at) AS recovery_s
FROM blocks AS e
LEFT JOIN blocks AS s ON s.deployment_id = e.deployment_id AND s.block = e.block + 1
LEFT JOIN deployments AS d ON d.id = e.deployment_id
LEFT JOIN flows AS f ON f.id = d.flow_id
WHERE e.failed_runs > 0;
