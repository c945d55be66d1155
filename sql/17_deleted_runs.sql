-- deleted_runs: one row per flow run the server no longer holds (deleted_at set),
-- with how it went (deleted_how):
--   'policy'   a `flowsync apply` deleted it (policy_actions says so);
--   'aged_out' it was older than the server's run retention when it vanished
--              (its end, else its expected start, else its creation, before deleted_at
--              by at least the retention): Prefect's db_vacuum (3.6.19+, `flow_runs`
--              enabled) or Prefect Cloud's plan (FLOWSYNC_RUN_RETENTION_DAYS);
--   'deleted'  younger than that, or the server deletes no runs on its own:
--              a person, another tool, or an automation deleted it;
--   'unknown'  the retention cannot be told (Prefect Cloud without
--              FLOWSYNC_RUN_RETENTION_DAYS, or a server hiding its settings).
-- By age, so a run a person deleted after it passed the retention reads as aged out.
-- The retention is what the pull recorded when it last found runs gone (sync_state
-- key run_retention); age_at_deletion is deleted_at minus that reference time.
CREATE OR REPLACE VIEW deleted_runs AS
WITH recorded AS (
    -- (TRY_CAST: a value of another shape, a newer flowsync's or one edited by hand,
    -- reads as not known, never as a failed view)
    SELECT
        coalesce(TRY_CAST(value->>'known' AS BOOLEAN), false) AS known,
        value->>'seconds' IS NULL AS no_seconds,
        TRY_CAST(value->>'seconds' AS DOUBLE) AS seconds,
        value->>'source' AS source
    FROM sync_state
    WHERE key = 'run_retention'
),
retention AS (
    -- (seconds: none, or from 0 up to 1,000 years: past that no interval holds it)
    SELECT
        known AND (no_seconds OR coalesce(seconds BETWEEN 0 AND 3.2e10, false)) AS known,
        CASE WHEN seconds BETWEEN 0 AND 3.2e10 THEN seconds END AS seconds,
        source
    FROM recorded
),
by_policy AS (
    SELECT DISTINCT flow_run_id AS id FROM policy_actions WHERE outcome = 'deleted'
),
runs AS (
    SELECT
        r.*,
        r.deleted_at - coalesce(r.end_time, r.expected_start_time, r.created) AS age_at_deletion
    FROM flow_runs AS r
    WHERE r.deleted_at IS NOT NULL
)
SELECT
    r.id,
    r.name,
    r.flow_id,
    r.deployment_id,
    r.state_type,
    r.end_time,
    r.deleted_at,
    r.age_at_deletion,
    CASE
        WHEN p.id IS NOT NULL THEN 'policy'
        WHEN ret.known IS NOT TRUE THEN 'unknown'
        WHEN ret.seconds IS NOT NULL AND r.age_at_deletion >= to_seconds(ret.seconds) THEN 'aged_out'
        ELSE 'deleted'
    END AS deleted_how,
    ret.seconds / 86400.0 AS retention_days,
    ret.source AS retention_source
FROM runs AS r
LEFT JOIN by_policy AS p ON p.id = r.id
LEFT JOIN retention AS ret ON true;
