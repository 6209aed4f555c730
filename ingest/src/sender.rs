//! The sender thread: ships spooled events to the server's `POST /v1/events`
//! as NDJSON batches.
//! The server deduplicates by `(source, seq)`, so a batch whose answer was lost
//! is simply sent again. Several server URLs may be given: after repeated
//! failures the sender moves to the next (connectors behind a load balancer
//! "disconnect on failure" the same way).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::frontend::lock;
use crate::recorder::{Request, Shared};
use crate::spool::SpoolReader;

#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Base URLs of servers (`http://127.0.0.1:8090`), tried in turn.
    pub urls: Vec<String>,
    pub token: String,
    pub batch_events: usize,
    pub batch_bytes: usize,
    /// Consecutive failures on one URL before moving to the next.
    pub failures_before_switch: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Time allowed for one request.
    pub timeout: Duration,
    /// How long to let events gather before sending when no one waits for
    /// the server's acknowledgement: fewer, larger batches spare the server
    /// (and a disk it may share) an fsync per event.
    pub linger: Duration,
}

impl SenderConfig {
    pub fn new(urls: Vec<String>, token: String) -> Self {
        Self {
            urls,
            token,
            batch_events: 1000,
            batch_bytes: 1 << 20,
            failures_before_switch: 3,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            linger: Duration::ZERO,
        }
    }
}

/// What became of one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or already stored): the spool may forget it.
    Stored,
    /// Not stored now; try again (after `after` if the server said so).
    Retry { after: Option<Duration>, why: String },
    /// The server refuses the content of event `index` (or of the batch):
    /// sending it again cannot help.
    Refused { index: Option<usize>, why: String },
}

/// Sends one NDJSON batch to `base`.
pub fn post_batch(agent: &ureq::Agent, base: &str, token: &str, lines: &[(u64, String)]) -> Outcome {
    let mut body = String::with_capacity(lines.iter().map(|l| l.1.len() + 1).sum());
    for (_, json) in lines {
        body.push_str(json);
        body.push('\n');
    }
    let url = format!("{}/v1/events", base.trim_end_matches('/'));
    let resp = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/x-ndjson")
        .send(body.as_bytes());
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { after: None, why: format!("{url}: {e}") },
    };
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let why = format!("{url} answered {status}: {} {}", answer["error"].as_str().unwrap_or(""), answer["detail"]);
    match status {
        200 => {
            let counted: u64 =
                ["accepted", "duplicates"].iter().filter_map(|k| answer.get(k).and_then(Value::as_u64)).sum();
            if counted == lines.len() as u64 {
                Outcome::Stored
            } else {
                Outcome::Retry { after: None, why: format!("{url} acknowledged {counted} of {} events", lines.len()) }
            }
        }
        400 | 413 | 422 => {
            let index = answer["detail"]["index"].as_u64().map(|i| i as usize);
            Outcome::Refused { index, why }
        }
        // Authentication, overload, outage: the data is fine, the moment is not.
        _ => Outcome::Retry { after, why },
    }
}

/// Which URL to use and how long to wait, from the run of failures.
#[derive(Debug)]
pub struct Failover {
    urls: Vec<String>,
    current: usize,
    failures: u32,
    per_url: u32,
    min: Duration,
    max: Duration,
}

impl Failover {
    pub fn new(config: &SenderConfig) -> Self {
        Self {
            urls: config.urls.clone(),
            current: 0,
            failures: 0,
            per_url: config.failures_before_switch.max(1),
            min: config.backoff_min,
            max: config.backoff_max,
        }
    }

    pub fn url(&self) -> &str {
        &self.urls[self.current]
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failure; returns how long to wait before the next try, and
    /// moves to the next URL every `failures_before_switch` failures.
    pub fn failed(&mut self, server_said: Option<Duration>) -> Duration {
        self.failures += 1;
        if self.failures.is_multiple_of(self.per_url) {
            self.current = (self.current + 1) % self.urls.len();
        }
        let exp = self.min.saturating_mul(1 << (self.failures - 1).min(16));
        server_said.unwrap_or(exp).clamp(self.min, self.max)
    }
}

pub(crate) fn send_loop(
    config: SenderConfig,
    mut reader: SpoolReader,
    mut acked: u64,
    shared: Arc<Shared>,
    tx: SyncSender<Request>,
    rejected: std::path::PathBuf,
) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(config.timeout)).build().into();
    let mut failover = Failover::new(&config);
    // Seqs reserved but never written (after a restart) leave `durable`
    // ahead of what can be read: wait for it to move before looking again.
    let mut read_all_through = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let through = {
            let guard = lock(&shared.durable.0);
            let (guard, _) = shared
                .durable
                .1
                .wait_timeout_while(guard, Duration::from_secs(1), |d| {
                    (*d <= acked || *d == read_all_through) && !shared.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *guard
        };
        // Linger only while less than a batch waits: a backlog goes at once.
        let small = through.saturating_sub(acked) < config.batch_events as u64;
        let through = if config.linger.is_zero() || !small || through <= acked || through == read_all_through {
            through
        } else {
            std::thread::sleep(config.linger);
            *lock(&shared.durable.0)
        };
        let batch = match reader.read(through, config.batch_events, config.batch_bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("reading the spool: {e}");
                std::thread::sleep(config.backoff_max);
                reader.rewind(acked);
                continue;
            }
        };
        let Some(&(last, _)) = batch.last() else {
            read_all_through = through;
            continue;
        };
        let url = failover.url().to_owned();
        lock(&shared.status).server.clone_from(&url);
        match post_batch(&agent, &url, &config.token, &batch) {
            Outcome::Stored => {
                failover.succeeded();
                acked = last;
                lock(&shared.status).last_error = None;
                if tx.send(Request::Ack(last)).is_err() {
                    return;
                }
            }
            Outcome::Retry { after, why } => {
                tracing::warn!("sending to the server: {why}");
                lock(&shared.status).last_error = Some(why);
                std::thread::sleep(failover.failed(after));
                reader.rewind(acked);
            }
            Outcome::Refused { why, .. } => {
                // One event at a time, so only what the server refuses is set
                // aside and nothing else waits behind it.
                tracing::error!("the server refused a batch, sending it event by event: {why}");
                for one in batch.chunks(1) {
                    match post_batch(&agent, &url, &config.token, one) {
                        Outcome::Stored => {}
                        Outcome::Refused { why, .. } => {
                            set_aside(&rejected, &one[0].1, &why);
                            lock(&shared.status).refused += 1;
                        }
                        Outcome::Retry { why, .. } => {
                            lock(&shared.status).last_error = Some(why);
                            break;
                        }
                    }
                    acked = one[0].0;
                    if tx.send(Request::Ack(acked)).is_err() {
                        return;
                    }
                }
                reader.rewind(acked);
            }
        }
    }
}

/// Keeps an event the server refused, with the reason, for an operator.
fn set_aside(path: &std::path::Path, json: &str, why: &str) {
    tracing::error!("the server refused an event; kept in {}: {why}", path.display());
    let line = format!("{{\"why\":{},\"event\":{json}}}\n", serde_json::Value::String(why.to_owned()));
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::error!("writing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_moves_on_after_repeated_failures_and_backs_off() {
        let mut cfg = SenderConfig::new(vec!["http://a".into(), "http://b".into()], "t".into());
        cfg.backoff_min = Duration::from_millis(10);
        cfg.backoff_max = Duration::from_millis(60);
        let mut f = Failover::new(&cfg);
        assert_eq!(f.url(), "http://a");
        assert_eq!(f.failed(None), Duration::from_millis(10));
        assert_eq!(f.failed(None), Duration::from_millis(20));
        assert_eq!(f.url(), "http://a");
        assert_eq!(f.failed(None), Duration::from_millis(40));
        assert_eq!(f.url(), "http://b", "three failures move to the next server");
        assert_eq!(f.failed(None), Duration::from_millis(60), "capped");
        assert_eq!(f.failed(Some(Duration::from_secs(1))), Duration::from_millis(60), "Retry-After is capped too");
        f.succeeded();
        assert_eq!(f.failed(Some(Duration::from_millis(30))), Duration::from_millis(30));
        f.failed(None);
        f.failed(None);
        assert_eq!(f.url(), "http://a", "and wraps around");
    }

    #[test]
    fn an_unreachable_server_is_a_retry() {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let out = post_batch(&agent, &format!("http://127.0.0.1:{port}"), "t", &[(1, "{}".into())]);
        assert!(matches!(out, Outcome::Retry { after: None, .. }), "{out:?}");
    }
}
