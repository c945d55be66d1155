-- lateness(per, since, until, late_after, include_deleted): a table macro,
-- one row per group of grouped_runs(per, ...) (see 12_grouped_runs.sql) with runs
-- in [since, until) that started or are waiting, named as in failure_rates.
-- lateness_s = start_time - expected_start_time of runs that started:
--   started         runs that started
--   late_runs       started more than late_after seconds after expected
--   p50_lateness_s, p95_lateness_s, max_lateness_s
--   waiting_now     SCHEDULED or PENDING runs expected in the window, and by
--                   the last pull (last_pull_at()), that had not started then
CREATE OR REPLACE MACRO lateness(
    per, since, until, late_after, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
WITH a AS (
    SELECT
        COLUMNS('^g_'),  -- the group's keys, as grouped_runs names them
        count(lateness_s) AS started,
        count(*) FILTER (WHERE lateness_s > late_after) AS late_runs,
        quantile_cont(lateness_s, [0.50, 0.95]) AS q,
        q[1] AS p50_lateness_s, q[2] AS p95_lateness_s,
        max(lateness_s) AS max_lateness_s,
        count(*) FILTER (
            WHERE state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL AND NOT is_deleted
                AND expected_start_time <= last_pull_at()  -- known not started by then
        ) AS waiting_now  -- a run deleted while it waited waits no more (include_deleted)
    FROM grouped_runs(
        per, since, until, include_deleted,
        only_flows := only_flows, only_deployments := only_deployments,
        only_tags := only_tags, only_states := only_states
    )
    GROUP BY ALL
    HAVING started + waiting_now > 0
)
SELECT * EXCLUDE (q) FROM named_groups('a');
