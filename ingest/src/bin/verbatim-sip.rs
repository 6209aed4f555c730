//! `verbatim-sip`: a SIP MESSAGE listener (UDP and TCP) for connectors on
//! enterprise IM servers. A MESSAGE is answered 200 only once its event is
//! in the recoverable spool (fsynced); if it cannot be, 503 with Retry-After.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use verbatim_ingest::frontend::{self, lock, RecorderArgs};
use verbatim_ingest::recorder::Recorder;
use verbatim_ingest::sip::{self, Action, Answered};
use verbatim_ingest::spool::SpoolMode;
use verbatim_schema::UnixNanos;

/// Records SIP MESSAGE requests (text/plain, message/cpim) into a Verbatim archive.
#[derive(Debug, Parser)]
#[command(name = "verbatim-sip", version)]
struct Args {
    /// UDP listener address.
    #[arg(long)]
    udp: Option<String>,
    /// TCP listener address.
    #[arg(long)]
    tcp: Option<String>,
    /// Where events go and wait (the spool is always recoverable here:
    /// fsynced before 200 OK).
    #[command(flatten)]
    recorder: RecorderArgs,
    /// Largest SIP message accepted, in bytes.
    #[arg(long, default_value_t = 64 << 10)]
    max_message: usize,
    /// How long a MESSAGE may wait for the spool before 503, in ms.
    #[arg(long, default_value_t = 5000)]
    wait_ms: u64,
}

struct Listener {
    recorder: Recorder,
    answered: Mutex<Answered>,
    wait: Duration,
    max: usize,
}

impl Listener {
    /// The answer to one request's bytes (None: no answer, e.g. ACK).
    async fn answer(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let req = match sip::parse(bytes) {
            Ok(r) => r,
            Err(r) => return Some(sip::refusal(bytes, r.status, &r.reason)),
        };
        if let Some(a) = lock(&self.answered).get(&req) {
            return Some(a.clone());
        }
        let tag = format!("v{:x}", UnixNanos::now().0);
        let answer = match sip::handle(&req) {
            Action::Answer(0, _) => return None,
            Action::Answer(status, reason) => sip::response(&req, status, &reason, &tag),
            Action::Record(c) => {
                let recorded =
                    tokio::time::timeout(self.wait, self.recorder.record(vec![c.into_wire(UnixNanos::now())], false))
                        .await;
                match recorded {
                    Ok(Ok(_)) => sip::response(&req, 200, "OK", &tag),
                    Ok(Err(e)) => {
                        tracing::warn!("MESSAGE not recorded: {e}");
                        return Some(sip::response(&req, 503, "Service Unavailable", &tag));
                    }
                    Err(_) => return Some(sip::response(&req, 503, "Service Unavailable", &tag)),
                }
            }
        };
        lock(&self.answered).insert(&req, answer.clone());
        Some(answer)
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else { continue };
            if buf[..n].iter().all(u8::is_ascii_whitespace) {
                continue; // a keep-alive
            }
            let (me, socket, bytes) = (self.clone(), socket.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(a) = me.answer(&bytes).await {
                    let _ = socket.send_to(&a, peer).await;
                }
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            tokio::spawn(self.clone().connection(stream, peer));
        }
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            // CRLFs between messages are keep-alives (RFC 5626: a double CRLF
            // ping is answered with a CRLF pong), not requests.
            let blank = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            if blank > 0 {
                let ping = buf[..blank].windows(4).any(|w| w == b"\r\n\r\n");
                buf.drain(..blank);
                if ping && stream.write_all(b"\r\n").await.is_err() {
                    return;
                }
            }
            match sip::message_len(&buf, self.max) {
                Ok(Some(len)) => {
                    let bytes: Vec<u8> = buf.drain(..len).collect();
                    if let Some(a) = self.answer(&bytes).await {
                        if stream.write_all(&a).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(r) => {
                    tracing::info!(%peer, "closing a SIP connection: {} {}", r.status, r.reason);
                    let _ = stream.write_all(&sip::refusal(&buf, r.status, &r.reason)).await;
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    frontend::main_with(run(args));
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.udp.is_none() && args.tcp.is_none() {
        bail!("nothing to listen on: give --udp and/or --tcp");
    }
    // 200 OK waits for the spool, not the server: events may gather.
    let recorder = args.recorder.start(SpoolMode::Recoverable, Duration::from_millis(20))?;
    let listener = Arc::new(Listener {
        recorder: recorder.clone(),
        answered: Mutex::new(Answered::default()),
        wait: Duration::from_millis(args.wait_ms),
        max: args.max_message,
    });
    if let Some(addr) = &args.udp {
        let s = UdpSocket::bind(addr).await.with_context(|| format!("binding UDP {addr}"))?;
        println!("sip udp listening on {}", s.local_addr()?);
        tokio::spawn(listener.clone().serve_udp(Arc::new(s)));
    }
    if let Some(addr) = &args.tcp {
        let l = TcpListener::bind(addr).await.with_context(|| format!("binding TCP {addr}"))?;
        println!("sip tcp listening on {}", l.local_addr()?);
        tokio::spawn(listener.clone().serve_tcp(l));
    }
    frontend::serve_until_signal(recorder).await
}
