-- runs_now(late_after): a table macro, one row per deployment (and one for runs
-- without a deployment) with live runs that are running or waiting to start now,
-- "now" being the time of the query over the runs as of the last pull:
--   running       RUNNING runs
--   waiting_now   SCHEDULED or PENDING runs expected to have started by the last pull
--                 (last_pull_at()) that had not: one expected after it may have since
--   late_now      of those, expected more than late_after seconds ago
-- The OpenMetrics gauges flowsync_runs_running, flowsync_runs_waiting and
-- flowsync_runs_late read it.
CREATE OR REPLACE MACRO runs_now(late_after) AS TABLE
WITH a AS (
    SELECT
        flow_id, deployment_id,
        count(*) FILTER (WHERE state_type = 'RUNNING') AS running,
        count(*) FILTER (
            WHERE state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL
                AND expected_start_time <= last_pull_at()
        ) AS waiting_now,
        count(*) FILTER (
            WHERE state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL
                AND expected_start_time <= last_pull_at()
                AND expected_start_time < now() - to_seconds(late_after)
        ) AS late_now
    FROM flow_runs_enriched
    WHERE NOT is_deleted AND state_type IN ('RUNNING', 'SCHEDULED', 'PENDING')
    GROUP BY flow_id, deployment_id
    HAVING running + waiting_now > 0
)
SELECT a.flow_id, f.name AS flow_name, a.deployment_id, d.name AS deployment_name,
    a.running, a.waiting_now, a.late_now
FROM a
LEFT JOIN flows AS f ON f.id = a.flow_id
LEFT JOIN deployments AS d ON d.id = a.deployment_id;
