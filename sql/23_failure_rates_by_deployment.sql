-- failure_rates_by_deployment: one row per deployment, over all history in the file (runs without a deployment form the NULL row).
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW failure_rates_by_deployment AS
SELECT deployment_id, flow_name, deployment_name, runs, failed, failure_rate, cancelled
FROM failure_rates('deployment', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false)
ORDER BY ALL;
