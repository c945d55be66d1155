-- lateness_by_deployment: one row per deployment (runs without a deployment
-- form the NULL row), over live runs. lateness_s = start_time -
-- expected_start_time of runs that started; late_runs = started more than 60 s
-- after they were expected; waiting_now = SCHEDULED or PENDING runs whose
-- expected start is already in the past (not started yet).
-- All history of live runs; one definition: the macro it selects from.
CREATE OR REPLACE VIEW lateness_by_deployment AS
SELECT deployment_id, flow_name, deployment_name, started, late_runs, p50_lateness_s, p95_lateness_s, max_lateness_s, waiting_now
FROM lateness('deployment', '-infinity'::TIMESTAMPTZ, now(), 60, false);
