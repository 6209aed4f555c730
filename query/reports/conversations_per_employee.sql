-- Conversations per participant (sender or recipient): how many
-- conversations each took part in, and how many events they sent.
SELECT participant,
       count(DISTINCT conversation_id) AS conversations,
       count(*) FILTER (WHERE is_sender) AS events_sent,
       min(ts) AS first_seen,
       max(ts) AS last_seen
FROM (
    SELECT conversation_id, ts, sender AS participant, true AS is_sender
    FROM events WHERE ts >= {{from}} AND ts < {{to}}
    UNION ALL
    SELECT conversation_id, ts, unnest(recipients) AS participant, false AS is_sender
    FROM events WHERE ts >= {{from}} AND ts < {{to}}
)
GROUP BY participant
ORDER BY conversations DESC, participant
LIMIT 1000
