-- lateness_by_deployment: one row per deployment (runs without a deployment
-- form the NULL row), over live runs. lateness_s = start_time -
-- expected_start_time of runs that started; late_runs = started more than 60 s
-- after they were expected; waiting_now = SCHEDULED or PENDING runs whose
-- expected start is already in the past (not started yet).
CREATE OR REPLACE VIEW lateness_by_deployment AS
SELECT
    deployment_id,
    flow_name,
    deployment_name,
    count(lateness_s) AS started,
    count(*) FILTER (WHERE lateness_s > 60) AS late_runs,
    quantile_cont(lateness_s, 0.50) AS p50_lateness_s,
    quantile_cont(lateness_s, 0.95) AS p95_lateness_s,
    max(lateness_s) AS max_lateness_s,
    count(*) FILTER (WHERE state_type IN ('SCHEDULED', 'PENDING') AND start_time IS NULL
                     AND expected_start_time < now()) AS waiting_now
FROM flow_runs_enriched
WHERE NOT is_deleted
GROUP BY ALL;
