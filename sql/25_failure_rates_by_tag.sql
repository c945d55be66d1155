-- failure_rates_by_tag: one row per run tag, over all history in the file (a run with two tags counts in both; untagged runs in none).
-- Live runs only. runs = finished runs (COMPLETED, FAILED or CRASHED);
-- failed = FAILED or CRASHED; failure_rate = failed / runs (NULL when no run
-- finished); cancelled = CANCELLED runs, counted apart and never a failure.
CREATE OR REPLACE VIEW failure_rates_by_tag AS
SELECT
    tag,
    count(*) FILTER (WHERE is_finished) AS runs,
    count(*) FILTER (WHERE is_failure) AS failed,
    count(*) FILTER (WHERE is_failure) / nullif(count(*) FILTER (WHERE is_finished), 0) AS failure_rate,
    count(*) FILTER (WHERE is_cancelled) AS cancelled
FROM (SELECT unnest(list_distinct(tags)) AS tag, * EXCLUDE (tags) FROM flow_runs_enriched)
WHERE NOT is_deleted
GROUP BY ALL
ORDER BY ALL;
