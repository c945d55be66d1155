-- failure_rates_by_day: one row per UTC day (of run_at) that has runs.
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_day AS
SELECT run_day, runs, failed, failure_rate, cancelled
FROM failure_rates('day', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
