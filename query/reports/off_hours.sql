-- Off-hours activity: messages sent before 08:00 or from 18:00 on, or on a
-- Saturday or Sunday, in the sender's own time (ts with its UTC offset).

-- Conversation ids are per site, so a conversation is (site, id).
WITH per_conversation AS (
    SELECT sender, site, conversation_id,
           count(*) AS messages,
           count(*) FILTER (WHERE weekday IN (0, 6)) AS weekend,
           count(*) FILTER (WHERE weekday NOT IN (0, 6)) AS weeknight,
           min(ts) AS first_seen,
           max(ts) AS last_seen
    FROM (
        SELECT sender, site, conversation_id, ts,
               ((local_secs % 86400) + 86400) % 86400 / 3600 AS hour,
               (((local_secs / 86400) + 4) % 7 + 7) % 7 AS weekday
        FROM (
            SELECT sender, site, conversation_id, ts, kind,
                   CAST(ts AS BIGINT) / 1000000000 + ts_utc_offset_secs AS local_secs
            FROM events
            WHERE ts >= {{from}} AND ts < {{to}}
        )
        WHERE kind = 'message'
    )
    WHERE hour < 8 OR hour >= 18 OR weekday IN (0, 6)
    GROUP BY sender, site, conversation_id
)
SELECT sender,
       sum(messages) AS messages,
       sum(weekend) AS weekend,
       sum(weeknight) AS weeknight,
       count(conversation_id) AS conversations,
       min(first_seen) AS first_seen,
       max(last_seen) AS last_seen
FROM per_conversation
GROUP BY sender
ORDER BY messages DESC, sender
LIMIT 1000
