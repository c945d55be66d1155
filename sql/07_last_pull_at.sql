-- last_pull_at(): a scalar macro, one row per call: when the last pull that went
-- well (full or incremental, `sync_runs`) started, capped at now(); now() in a file no
-- pull has finished. What the file knows of the runs is as of then: a run it holds as
-- SCHEDULED whose expected start came after it may have started since, so the macros
-- that count runs waiting "now" (runs_now, stuck_runs, lateness's waiting_now) count
-- only runs expected by then.
CREATE OR REPLACE MACRO last_pull_at() AS least(
    now(),
    (SELECT max(started_at) FROM sync_runs
     WHERE status = 'ok' AND mode IN ('full', 'incremental'))
);
