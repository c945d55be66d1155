-- flow_runs_enriched: one row per flow run in the file, live or deleted on the
-- server (is_deleted): every column of flow_run_measures (run_at, run_day,
-- duration_s, lateness_s, is_subflow, is_finished, is_failure, is_cancelled,
-- is_retried, is_deleted ...) plus the names of its flow and deployment.
-- The view to start from in ad-hoc SQL.
CREATE OR REPLACE VIEW flow_runs_enriched AS
SELECT
    m.id,
    m.name,
    m.flow_id,
    f.name AS flow_name,
    m.deployment_id,
    d.name AS deployment_name,
    m.* EXCLUDE (id, name, flow_id, deployment_id)
FROM flow_run_measures AS m
LEFT JOIN flows AS f ON f.id = m.flow_id
LEFT JOIN deployments AS d ON d.id = m.deployment_id;
