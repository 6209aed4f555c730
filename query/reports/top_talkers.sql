-- Top talkers: who sent the most messages in the period.
-- Parameters: {{from}} and {{to}} (timestamps; the period is [from, to)).
SELECT sender,
       count(*) AS messages,
       sum(body_len) AS bytes,
       count(DISTINCT conversation_id) AS conversations,
       count(DISTINCT network) AS networks
FROM events
WHERE kind = 'message' AND ts >= {{from}} AND ts < {{to}}
GROUP BY sender
ORDER BY messages DESC, sender
LIMIT 100
