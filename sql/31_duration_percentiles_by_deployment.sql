-- duration_percentiles_by_deployment: one row per deployment (runs without a deployment form the NULL row), over the live finished runs (COMPLETED, FAILED or
-- CRASHED) that have both a start and an end time. Seconds of wall clock
-- (duration_s = end_time - start_time, retries included); percentiles are
-- continuous (linear interpolation, as quantile_cont).
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW duration_percentiles_by_deployment AS
SELECT deployment_id, flow_name, deployment_name, runs, p50_s, p90_s, p95_s, p99_s, max_s, mean_s
FROM duration_percentiles('deployment', '-infinity'::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ, '-infinity'::TIMESTAMPTZ, false);
