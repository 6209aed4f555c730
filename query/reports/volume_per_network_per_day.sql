-- Volume per network per day (UTC): events, messages and body bytes.
SELECT CAST(date_trunc('day', ts) AS DATE) AS day,
       network,
       count(*) AS events,
       count(*) FILTER (WHERE kind = 'message') AS messages,
       sum(body_len) AS bytes
FROM events
WHERE ts >= {{from}} AND ts < {{to}}
GROUP BY 1, 2
ORDER BY 1, 2
