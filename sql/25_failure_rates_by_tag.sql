-- failure_rates_by_tag: one row per run tag, over all history in the file (a run with two tags counts in both; untagged runs in none).
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_tag AS
SELECT tag, runs, failed, failure_rate, cancelled
FROM failure_rates('tag', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
