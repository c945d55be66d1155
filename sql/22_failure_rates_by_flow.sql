-- failure_rates_by_flow: one row per flow, over all history in the file.
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_flow AS
SELECT flow_id, flow_name, runs, failed, failure_rate, cancelled
FROM failure_rates('flow', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
