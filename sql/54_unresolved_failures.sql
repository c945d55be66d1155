-- unresolved_failures: one row per deployment whose latest finished run
-- (COMPLETED, FAILED or CRASHED; cancelled runs skipped) failed, over live
-- runs: the backlog to work through, as the Prometheus exporter's "failed
-- runs not yet recovered". A deployment deleted on the server is left out:
-- Prefect keeps its finished runs, so its failures could never be followed by
-- a success (an alert on it would never resolve). From deployment_streaks:
--   failing_since          run_at of the first failure since the last success
--   failures_since_success failed runs since then (the failing streak)
--   last_success_at        run_at of its latest COMPLETED run (NULL: never)
--   latest_failure_at, latest_failure_run_id, latest_state_type,
--   latest_signature, latest_error_text, latest_message  its latest failed run
--   (one message per deployment normalised, after the aggregation)
CREATE OR REPLACE VIEW unresolved_failures AS
SELECT
    deployment_id,
    flow_name,
    deployment_name,
    failing_since,
    failing_streak AS failures_since_success,
    last_success_at,
    last_failure_at AS latest_failure_at,
    latest_failure_run_id,
    latest_state_type,
    signature_of(error_signature_text(latest_message)) AS latest_signature,
    error_signature_text(latest_message) AS latest_error_text,
    latest_message
FROM deployment_streaks AS s
WHERE failing_streak > 0
  AND NOT EXISTS (
      SELECT 1 FROM deployments AS d WHERE d.id = s.deployment_id AND d.deleted_at IS NOT NULL
  );
