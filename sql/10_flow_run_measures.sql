-- flow_run_measures: one row per flow run in the file, live or deleted on the
-- server, with its ids and the measures every report uses, and no names (no
-- joins, so reports can aggregate first and look names up after):
--   run_at      when the run was meant to start (expected_start_time: the
--               scheduled time, or when an ad-hoc run was first given a
--               state; Prefect sets it on every run that has a state). Kept a
--               plain column, not a coalesce, so window filters reach the
--               scan. run_day is its UTC date
--   duration_s  end_time - start_time in seconds (wall clock, retries included)
--   lateness_s  start_time - expected_start_time in seconds
--   is_finished COMPLETED, FAILED or CRASHED;  is_failure  FAILED or CRASHED
--   is_cancelled CANCELLED (reported separately, never a failure)
--   error_text  for a failed run: its state message normalised by
--               error_signature_text (ids, numbers, paths... masked);
--               error_signature its short hash (signature_of). For ad-hoc
--               SQL on a few runs: normalising costs ~20 us a run, so the
--               reports normalise distinct messages after filtering instead
-- Live figures filter on NOT is_deleted; history keeps deleted runs.
CREATE OR REPLACE VIEW flow_run_measures AS
SELECT
    r.id,
    r.name,
    r.flow_id,
    r.deployment_id,
    r.work_pool_id,
    r.work_pool_name,
    r.work_queue_id,
    r.work_queue_name,
    r.tags,
    r.state_type,
    r.state_name,
    r.state_message,
    r.state_timestamp,
    r.run_count,
    r.parent_task_run_id,
    r.created,
    r.expected_start_time,
    r.start_time,
    r.end_time,
    r.total_run_time,
    r.expected_start_time AS run_at,
    CAST(timezone('UTC', r.expected_start_time) AS DATE) AS run_day,
    CASE WHEN r.start_time IS NOT NULL AND r.end_time IS NOT NULL
         THEN epoch(r.end_time - r.start_time) END AS duration_s,
    CASE WHEN r.start_time IS NOT NULL AND r.expected_start_time IS NOT NULL
         THEN epoch(r.start_time - r.expected_start_time) END AS lateness_s,
    r.parent_task_run_id IS NOT NULL AS is_subflow,
    coalesce(r.state_type IN ('COMPLETED', 'FAILED', 'CRASHED'), false) AS is_finished,
    coalesce(r.state_type IN ('FAILED', 'CRASHED'), false) AS is_failure,
    coalesce(r.state_type = 'CANCELLED', false) AS is_cancelled,
    coalesce(r.run_count, 0) > 1 AS is_retried,
    r.deleted_at IS NOT NULL AS is_deleted,
    r.deleted_at,
    CASE WHEN r.state_type IN ('FAILED', 'CRASHED') THEN error_signature_text(r.state_message) END AS error_text,
    CASE WHEN r.state_type IN ('FAILED', 'CRASHED') THEN signature_of(error_signature_text(r.state_message)) END
        AS error_signature
FROM flow_runs AS r;
