-- failure_recoveries: one row per failure episode of a deployment: a run of
-- consecutive failed finished runs (FAILED or CRASHED, in run_at order,
-- cancelled runs skipped), over live runs. recovered_at is the run_at of the
-- next COMPLETED run (NULL while still failing); recovery_s = recovered_at -
-- failed_at, the time from the first failure to the next success (MTTR is its
-- mean).
CREATE OR REPLACE VIEW failure_recoveries AS
WITH finished AS (
    SELECT
        deployment_id,
        flow_name,
        deployment_name,
        run_at,
        is_failure,
        -- Runs sharing a block number belong to the same streak: the count of
        -- successes so far only moves on a success.
        count(*) FILTER (WHERE NOT is_failure) OVER (
            PARTITION BY deployment_id ORDER BY run_at, id ROWS UNBOUNDED PRECEDING
        ) AS block
    FROM flow_runs_enriched
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL
),
episodes AS (
    SELECT
        deployment_id,
        block,
        any_value(flow_name) AS flow_name,
        any_value(deployment_name) AS deployment_name,
        min(run_at) AS failed_at,
        count(*) AS failed_runs
    FROM finished
    WHERE is_failure
    GROUP BY deployment_id, block
)
SELECT
    e.deployment_id,
    e.flow_name,
    e.deployment_name,
    e.failed_at,
    e.failed_runs,
    s.recovered_at,
    epoch(s.recovered_at - e.failed_at) AS recovery_s
FROM episodes AS e
LEFT JOIN (
    SELECT deployment_id, block, min(run_at) AS recovered_at
    FROM finished
    WHERE NOT is_failure
    GROUP BY deployment_id, block
) AS s ON s.deployment_id = e.deployment_id AND s.block = e.block + 1;
