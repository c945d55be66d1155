-- error_signatures(since, until, prev_start, include_deleted): a table macro,
-- one row per error signature (the short hash of a failed run's normalised
-- message, see 05_error_signature_text.sql) with failed runs (FAILED or
-- CRASHED) in [since, until):
--   signature, error_text  the short hash and the normalised first line
--   runs                   failed runs with it in the window
--   share                  runs / all failed runs in the window
--   deployments, flows     distinct deployments / flows affected in the window
--   prev_runs, runs_change failed runs in [prev_start, since), runs - prev_runs
--   first_seen             run_at of its first failure in all the history the
--                          file has seen (error_signatures_seen, recorded at
--                          pull time; deleted runs too): in the window means new
--   last_seen              run_at of its latest failure
--   example_run_id, example_state_type, example_message  its latest failed
--                          run in the window (by run_at, then id: one run
--                          when two share a run_at), with the full state message
--   flow_name, deployment_name  of that run
-- Live runs only unless include_deleted; only_*: see 06_run_selected.sql. Pass prev_start = since for no
-- previous window. Each distinct message is normalised once.
CREATE OR REPLACE MACRO error_signatures(
    since, until, prev_start, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
WITH failed AS (
    SELECT id, run_at, state_type, state_message, flow_id, deployment_id
    FROM flow_run_measures
    WHERE is_failure AND run_at >= least(prev_start, since) AND run_at < until AND (include_deleted OR NOT is_deleted)
        AND run_selected(flow_id, deployment_id, tags, state_type, only_flows, only_deployments, only_tags, only_states)
), texts AS (
    SELECT state_message, error_signature_text(state_message) AS error_text
    FROM (SELECT DISTINCT state_message FROM failed)
), a AS (
    SELECT
        t.error_text,
        count(*) FILTER (WHERE run_at >= since) AS runs,
        count(DISTINCT deployment_id) FILTER (WHERE run_at >= since) AS deployments,
        count(DISTINCT flow_id) FILTER (WHERE run_at >= since) AS flows,
        count(*) FILTER (WHERE run_at < since) AS prev_runs,
        runs - prev_runs AS runs_change,
        min(run_at) AS first_seen,
        max(run_at) AS last_seen,
        arg_max(id, (run_at, id)) FILTER (WHERE run_at >= since) AS example_run_id,
        arg_max(state_type, (run_at, id)) FILTER (WHERE run_at >= since) AS example_state_type,
        arg_max(f.state_message, (run_at, id)) FILTER (WHERE run_at >= since) AS example_message,
        arg_max(flow_id, (run_at, id)) FILTER (WHERE run_at >= since) AS example_flow_id,
        arg_max(deployment_id, (run_at, id)) FILTER (WHERE run_at >= since) AS example_deployment_id
    FROM failed AS f
    JOIN texts AS t ON t.state_message IS NOT DISTINCT FROM f.state_message
    GROUP BY t.error_text
    HAVING runs > 0
)
SELECT
    signature_of(a.error_text) AS signature, a.error_text, a.runs,
    a.runs / sum(a.runs) OVER () AS share,
    a.deployments, a.flows, a.prev_runs, a.runs_change,
    least(a.first_seen, seen.first_seen) AS first_seen, a.last_seen,
    a.example_run_id, a.example_state_type, a.example_message,
    f.name AS flow_name, d.name AS deployment_name
FROM a
LEFT JOIN error_signatures_seen AS seen ON seen.error_text = a.error_text
LEFT JOIN flows AS f ON f.id = a.example_flow_id
LEFT JOIN deployments AS d ON d.id = a.example_deployment_id;
