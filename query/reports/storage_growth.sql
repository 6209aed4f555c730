-- Storage growth: events and body bytes stored per day (by received_at),
-- with running totals.
SELECT day,
       events,
       bytes,
       sum(events) OVER (ORDER BY day) AS total_events,
       sum(bytes) OVER (ORDER BY day) AS total_bytes
FROM (
    SELECT CAST(date_trunc('day', received_at) AS DATE) AS day,
           count(*) AS events,
           sum(body_len) AS bytes
    FROM events
    WHERE received_at >= {{from}} AND received_at < {{to}}
    GROUP BY 1
)
ORDER BY day
