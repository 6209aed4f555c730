-- Conversations per participant (sender or recipient): how many
-- conversations each took part in, and how many events they sent.

-- Conversation ids are per site, so a conversation is (site, id).
WITH per_conversation AS (
    SELECT participant, site, conversation_id,
           count(*) FILTER (WHERE is_sender) AS sent,
           min(ts) AS first_seen,
           max(ts) AS last_seen
    FROM (
        SELECT site, conversation_id, ts, sender AS participant, true AS is_sender
        FROM events WHERE ts >= {{from}} AND ts < {{to}}
        UNION ALL
        SELECT site, conversation_id, ts, unnest(recipients) AS participant, false AS is_sender
        FROM events WHERE ts >= {{from}} AND ts < {{to}}
    )
    GROUP BY participant, site, conversation_id
)
SELECT participant,
       count(conversation_id) AS conversations,
       sum(sent) AS events_sent,
       min(first_seen) AS first_seen,
       max(last_seen) AS last_seen
FROM per_conversation
GROUP BY participant
ORDER BY conversations DESC, participant
LIMIT 1000
