-- failure_rates_by_day: one row per UTC day (of run_at) that has runs.
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
CREATE OR REPLACE VIEW failure_rates_by_day AS
SELECT
    run_day,
    count(*) FILTER (WHERE is_finished) AS runs,
    count(*) FILTER (WHERE is_failure) AS failed,
    count(*) FILTER (WHERE is_failure) / nullif(count(*) FILTER (WHERE is_finished), 0) AS failure_rate,
    count(*) FILTER (WHERE is_cancelled) AS cancelled
FROM flow_runs_enriched
WHERE NOT is_deleted
GROUP BY ALL
ORDER BY ALL;
