-- stuck_runs(history_since, late_after, min_runs := 5): a table macro,
-- one row per live run that has been RUNNING longer than its deployment's usual p95
-- duration, or SCHEDULED/PENDING past its expected start for longer than the
-- deployment's usual p95 lateness (and at least late_after seconds), "now"
-- being the time of the query over the runs as of the last pull (a waiting run:
-- expected by then, last_pull_at(); one expected after may have started since). Usual = the
-- deployment's finished runs since history_since that have the measure: a
-- duration (start and end) for a running run, a start for a waiting one (at
-- least min_runs of them, so a run that crashed before it started does not
-- count; fewer: left out, no usual to compare with):
--   since          start_time (running) or expected_start_time (waiting)
--   for_s          seconds running or waiting so far
--   usual_p95_s    the p95 it exceeds; times_usual = for_s / usual_p95_s
--   usual_runs     finished runs the p95 is of
CREATE OR REPLACE MACRO stuck_runs(history_since, late_after, min_runs := 5) AS TABLE
WITH usual AS (
    SELECT
        deployment_id,
        count(duration_s) AS duration_runs,
        count(lateness_s) AS lateness_runs,
        quantile_cont(duration_s, 0.95) AS p95_duration_s,
        quantile_cont(lateness_s, 0.95) AS p95_lateness_s
    FROM flow_run_measures
    WHERE NOT is_deleted AND is_finished AND deployment_id IS NOT NULL AND run_at >= history_since
    GROUP BY deployment_id
), open_runs AS (
    SELECT
        *,
        state_type = 'RUNNING' AS is_running,
        CASE WHEN state_type = 'RUNNING' THEN start_time ELSE expected_start_time END AS since,
        epoch(now() - since) AS for_s
    FROM flow_runs_enriched
    WHERE NOT is_deleted AND deployment_id IS NOT NULL AND (
        (state_type = 'RUNNING' AND start_time IS NOT NULL)
        OR (state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL
            AND expected_start_time <= last_pull_at())
    )
), judged AS (
    SELECT
        r.*,
        CASE WHEN r.is_running THEN u.duration_runs ELSE u.lateness_runs END AS usual_runs,
        CASE WHEN r.is_running THEN u.p95_duration_s
             ELSE greatest(u.p95_lateness_s, late_after) END AS usual_p95_s
    FROM open_runs AS r JOIN usual AS u ON u.deployment_id = r.deployment_id
)
SELECT
    flow_name, deployment_name, name, state_type, state_name, since, for_s,
    usual_p95_s, for_s / nullif(usual_p95_s, 0) AS times_usual, usual_runs,
    id, flow_id, deployment_id
FROM judged
WHERE usual_runs >= min_runs AND for_s > usual_p95_s;
