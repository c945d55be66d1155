-- mttr_by_deployment: one row per deployment that has failed (live runs):
-- failure episodes, how many recovered, and the mean / max time from a
-- failure to the next success (mttr_s, max_recovery_s; see failure_recoveries).
CREATE OR REPLACE VIEW mttr_by_deployment AS
SELECT
    deployment_id,
    any_value(flow_name) AS flow_name,
    any_value(deployment_name) AS deployment_name,
    count(*) AS episodes,
    count(recovered_at) AS recovered,
    avg(recovery_s) AS mttr_s,
    max(recovery_s) AS max_recovery_s
FROM failure_recoveries
GROUP BY deployment_id;
