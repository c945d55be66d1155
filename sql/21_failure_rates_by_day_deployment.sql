-- failure_rates_by_day_deployment: one row per UTC day and deployment (runs without a deployment have NULL ids).
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_day_deployment AS
SELECT run_day, deployment_id, flow_name, deployment_name, runs, failed, failure_rate, cancelled
FROM failure_rates('day_deployment', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
