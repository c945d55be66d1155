-- run_selected(flow_id, deployment_id, tags, state_type, only_flows,
-- only_deployments, only_tags, only_states): a scalar macro, one row per call:
-- whether a run passes the report filters (--flow, --deployment, --tag,
-- --state). A NULL filter passes every run; flows and deployments are lists of
-- ids (the reports resolve names to ids), a run passes --tag when it has any
-- of the tags, --state when its state_type is one of them. Every report macro
-- takes the four only_* filters as optional named parameters and applies them
-- here, to runs, before grouping.
CREATE OR REPLACE MACRO run_selected(
    flow_id, deployment_id, tags, state_type,
    only_flows, only_deployments, only_tags, only_states
) AS
    (only_flows IS NULL OR list_contains(CAST(only_flows AS UUID[]), flow_id))
    AND (only_deployments IS NULL OR list_contains(CAST(only_deployments AS UUID[]), deployment_id))
    AND (only_tags IS NULL OR list_has_any(tags, CAST(only_tags AS VARCHAR[])))
    AND (only_states IS NULL OR list_contains(CAST(only_states AS VARCHAR[]), state_type));
