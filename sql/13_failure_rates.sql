-- failure_rates(per, since, until, prev_start, include_deleted): a table macro,
-- one row per group of grouped_runs(per, ...) (see 12_grouped_runs.sql) with
-- runs in [prev_start, until), named: run_day, run_hour, flow_id, flow_name,
-- deployment_id, deployment_name, work_pool_name, tag (keys `per` does not use
-- are NULL), then for the window [since, until):
--   runs         finished runs (COMPLETED, FAILED or CRASHED)
--   failed       FAILED or CRASHED
--   failure_rate failed / runs (NULL when no run finished)
--   cancelled    CANCELLED, counted apart and never a failure
-- and the same for the previous window [prev_start, since) (prev_runs,
-- prev_failed, prev_failure_rate, prev_cancelled), with failure_rate_change =
-- failure_rate - prev_failure_rate (rate points), runs_change = runs -
-- prev_runs and failed_change = failed - prev_failed. Pass prev_start = since for
-- no previous window. Groups with no finished or cancelled run in either
-- window are left out.
CREATE OR REPLACE MACRO failure_rates(
    per, since, until, prev_start, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
WITH a AS (
    SELECT
        COLUMNS('^g_'),  -- the group's keys, as grouped_runs names them
        count(*) FILTER (WHERE is_finished AND run_at >= since) AS runs,
        count(*) FILTER (WHERE is_failure AND run_at >= since) AS failed,
        failed / nullif(runs, 0) AS failure_rate,
        count(*) FILTER (WHERE is_cancelled AND run_at >= since) AS cancelled,
        count(*) FILTER (WHERE is_finished AND run_at < since) AS prev_runs,
        count(*) FILTER (WHERE is_failure AND run_at < since) AS prev_failed,
        prev_failed / nullif(prev_runs, 0) AS prev_failure_rate,
        count(*) FILTER (WHERE is_cancelled AND run_at < since) AS prev_cancelled,
        failure_rate - prev_failure_rate AS failure_rate_change,
        runs - prev_runs AS runs_change,
        failed - prev_failed AS failed_change
    FROM grouped_runs(
        per, least(prev_start, since), until, include_deleted,
        only_flows := only_flows, only_deployments := only_deployments,
        only_tags := only_tags, only_states := only_states
    )
    GROUP BY ALL
    HAVING runs + cancelled + prev_runs + prev_cancelled > 0
)
SELECT * FROM named_groups('a');
