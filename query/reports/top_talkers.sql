-- Top talkers: who sent the most messages in the period.
-- Parameters: {{from}} and {{to}} (timestamps; the period is [from, to)).

-- Conversation ids are per site, so a conversation is (site, id): the inner
-- query has one row per sender and conversation (a conversation is on one
-- network), the outer one counts them.
WITH per_conversation AS (
    SELECT sender, site, conversation_id, network, count(*) AS messages, sum(body_len) AS bytes
    FROM events
    WHERE kind = 'message' AND ts >= {{from}} AND ts < {{to}}
    GROUP BY sender, site, conversation_id, network
)
SELECT sender,
       sum(messages) AS messages,
       sum(bytes) AS bytes,
       count(conversation_id) AS conversations,
       count(DISTINCT network) AS networks
FROM per_conversation
GROUP BY sender
ORDER BY messages DESC, sender
LIMIT 100
