-- failure_rates_by_work_pool: one row per work pool (of the run), over all history in the file.
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_work_pool AS
SELECT work_pool_name, runs, failed, failure_rate, cancelled
FROM failure_rates('work_pool', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
