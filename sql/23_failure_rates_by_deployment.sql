-- failure_rates_by_deployment: one row per deployment, over all history in the file (runs without a deployment form the NULL row).
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
CREATE OR REPLACE VIEW failure_rates_by_deployment AS
SELECT
    deployment_id, flow_name, deployment_name,
    count(*) FILTER (WHERE is_finished) AS runs,
    count(*) FILTER (WHERE is_failure) AS failed,
    count(*) FILTER (WHERE is_failure) / nullif(count(*) FILTER (WHERE is_finished), 0) AS failure_rate,
    count(*) FILTER (WHERE is_cancelled) AS cancelled
FROM flow_runs_enriched
WHERE NOT is_deleted
GROUP BY ALL
ORDER BY ALL;
