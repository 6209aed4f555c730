-- External contacts: for events the capture marked inbound or outbound,
-- which employee talked to which outside handle, how often, first and last.
SELECT employee,
       external,
       count(*) AS messages,
       count(*) FILTER (WHERE outbound) AS sent,
       count(*) FILTER (WHERE NOT outbound) AS received,
       min(ts) AS first_seen,
       max(ts) AS last_seen
FROM (
    SELECT sender AS employee, unnest(recipients) AS external, ts, true AS outbound
    FROM events WHERE direction = 'outbound' AND ts >= {{from}} AND ts < {{to}}
    UNION ALL
    SELECT unnest(recipients) AS employee, sender AS external, ts, false AS outbound
    FROM events WHERE direction = 'inbound' AND ts >= {{from}} AND ts < {{to}}
)
GROUP BY employee, external
ORDER BY messages DESC, employee, external
LIMIT 1000
