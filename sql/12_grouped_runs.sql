-- grouped_runs(per, since, until, include_deleted): a table macro, one row per
-- flow run of flow_run_measures whose run_at is in [since, until) and per
-- group it counts in under `per`, with the group's keys in g_day, g_hour, g_flow_id,
-- g_deployment_id, g_work_pool_name, g_tag (the keys `per` does not use are
-- NULL). `per` is one of:
--   all            one group
--   day            UTC day of run_at
--   hour           UTC hour of run_at (a timestamp; the health page of a short window)
--   flow           flow
--   deployment     deployment and flow (runs without a deployment: a group per flow)
--   day_deployment UTC day x deployment and flow
--   work_pool      work pool of the run
--   tag            run tag: a run counts once under each distinct tag, untagged runs under none
-- Live runs only unless include_deleted; the optional only_* filters
-- (--flow, --deployment, --tag, --state) keep the runs run_selected passes. Every grouped figure (failure_rates,
-- duration_percentiles, lateness) aggregates this, so groups mean the same
-- thing in every report.
CREATE OR REPLACE MACRO grouped_runs(
    per, since, until, include_deleted,
    only_flows := NULL, only_deployments := NULL, only_tags := NULL, only_states := NULL
) AS TABLE
SELECT
    CASE WHEN per IN ('day', 'day_deployment') THEN run_day END AS g_day,
    CASE WHEN per = 'hour' THEN date_trunc('hour', run_at) END AS g_hour,
    CASE WHEN per IN ('flow', 'deployment', 'day_deployment') THEN flow_id END AS g_flow_id,
    CASE WHEN per IN ('deployment', 'day_deployment') THEN deployment_id END AS g_deployment_id,
    CASE WHEN per = 'work_pool' THEN work_pool_name END AS g_work_pool_name,
    CAST(NULL AS VARCHAR) AS g_tag,
    * EXCLUDE (tags)
FROM flow_run_measures
WHERE per <> 'tag' AND run_at >= since AND run_at < until AND (include_deleted OR NOT is_deleted)
    AND run_selected(flow_id, deployment_id, tags, state_type, only_flows, only_deployments, only_tags, only_states)
UNION ALL BY NAME
SELECT
    CAST(NULL AS DATE) AS g_day,
    CAST(NULL AS TIMESTAMPTZ) AS g_hour,
    CAST(NULL AS UUID) AS g_flow_id,
    CAST(NULL AS UUID) AS g_deployment_id,
    CAST(NULL AS VARCHAR) AS g_work_pool_name,
    g_tag,
    * EXCLUDE (g_tag)
FROM (SELECT unnest(list_distinct(tags)) AS g_tag, * EXCLUDE (tags) FROM flow_run_measures
      WHERE per = 'tag' AND run_at >= since AND run_at < until AND (include_deleted OR NOT is_deleted)
          AND run_selected(flow_id, deployment_id, tags, state_type, only_flows, only_deployments, only_tags, only_states));

-- named_groups(grouped): the rows of `grouped`, the name of a table or CTE with one
-- row per group of grouped_runs (its keys g_day ... g_tag, then the group's
-- figures), with the keys as the reports name them (run_day, run_hour, flow_id,
-- deployment_id, work_pool_name, tag) and the flow's and deployment's names beside
-- their ids. The grouped figures (failure_rates, duration_percentiles, lateness)
-- aggregate first and name their groups here: the names are looked up once per
-- group, not once per run.
CREATE OR REPLACE MACRO named_groups(grouped) AS TABLE
SELECT
    a.g_day AS run_day, a.g_hour AS run_hour, a.g_flow_id AS flow_id, f.name AS flow_name,
    a.g_deployment_id AS deployment_id, d.name AS deployment_name,
    a.g_work_pool_name AS work_pool_name, a.g_tag AS tag,
    a.* EXCLUDE (g_day, g_hour, g_flow_id, g_deployment_id, g_work_pool_name, g_tag)
FROM query_table(grouped) AS a
LEFT JOIN flows AS f ON f.id = a.g_flow_id
LEFT JOIN deployments AS d ON d.id = a.g_deployment_id;
