-- duration_percentiles(per, since, until, prev_start, include_deleted): a table
-- macro, one row per group of grouped_runs(per, ...) (see 12_grouped_runs.sql)
-- with finished runs (COMPLETED, FAILED or CRASHED) that have a start and an
-- end time in [since, until), named as in failure_rates. Seconds of wall
-- clock (duration_s = end_time - start_time, retries included); percentiles
-- are continuous (linear interpolation, as quantile_cont):
--   runs, p50_s, p90_s, p95_s, p99_s, max_s, mean_s
-- and for the previous window [prev_start, since): prev_runs, prev_p50_s,
-- prev_p95_s, with p50_change_s and p95_change_s = this - previous (the
-- trend). Pass prev_start = since for no previous window.
CREATE OR REPLACE MACRO duration_percentiles(
    per, since, until, prev_start, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
WITH a AS (
    SELECT
        COLUMNS('^g_'),  -- the group's keys, as grouped_runs names them
        count(*) FILTER (WHERE run_at >= since) AS runs,
        -- One list quantile: a single sort per group for all four percentiles.
        quantile_cont(duration_s, [0.50, 0.90, 0.95, 0.99]) FILTER (WHERE run_at >= since) AS q,
        q[1] AS p50_s, q[2] AS p90_s, q[3] AS p95_s, q[4] AS p99_s,
        max(duration_s) FILTER (WHERE run_at >= since) AS max_s,
        avg(duration_s) FILTER (WHERE run_at >= since) AS mean_s,
        count(*) FILTER (WHERE run_at < since) AS prev_runs,
        quantile_cont(duration_s, [0.50, 0.95]) FILTER (WHERE run_at < since) AS prev_q,
        prev_q[1] AS prev_p50_s, prev_q[2] AS prev_p95_s,
        p50_s - prev_p50_s AS p50_change_s,
        p95_s - prev_p95_s AS p95_change_s
    FROM grouped_runs(
        per, least(prev_start, since), until, include_deleted,
        only_flows := only_flows, only_deployments := only_deployments,
        only_tags := only_tags, only_states := only_states
    )
    WHERE is_finished AND duration_s IS NOT NULL
    GROUP BY ALL
    HAVING runs > 0
)
SELECT * EXCLUDE (q, prev_q) FROM named_groups('a');
