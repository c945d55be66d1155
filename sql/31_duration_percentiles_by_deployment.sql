-- duration_percentiles_by_deployment: one row per deployment (runs without a deployment form the NULL row), over the live finished runs (COMPLETED, FAILED or
-- CRASHED) that have both a start and an end time. Seconds of wall clock
-- (duration_s = end_time - start_time, retries included); percentiles are
-- continuous (linear interpolation, as quantile_cont).
CREATE OR REPLACE VIEW duration_percentiles_by_deployment AS
SELECT
    deployment_id, flow_name, deployment_name,
    count(*) AS runs,
    quantile_cont(duration_s, 0.50) AS p50_s,
    quantile_cont(duration_s, 0.90) AS p90_s,
    quantile_cont(duration_s, 0.95) AS p95_s,
    quantile_cont(duration_s, 0.99) AS p99_s,
    max(duration_s) AS max_s,
    avg(duration_s) AS mean_s
FROM flow_runs_enriched
WHERE NOT is_deleted AND is_finished AND duration_s IS NOT NULL
GROUP BY ALL;
