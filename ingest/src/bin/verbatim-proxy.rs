//! `verbatim-proxy`: the capture proxy (SOCKS and routed listeners).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use verbatim_ingest::proxy::{Allow, Proxy, ProxyConfig, Via};
use verbatim_ingest::recorder::{Recorder, RecorderConfig};
use verbatim_ingest::relay::{Logging, RelayConfig};
use verbatim_ingest::sender::SenderConfig;
use verbatim_ingest::socks::{Target, Users};
use verbatim_ingest::spool::{SpoolConfig, SpoolMode};
use verbatim_ingest::xmpp::StartTls;

/// Records IRC and XMPP chat passing through it, and the existence of every
/// other connection, into a Verbatim archive.
#[derive(Debug, Parser)]
#[command(name = "verbatim-proxy", version)]
struct Args {
    /// SOCKS4/4a/5 listener address.
    #[arg(long)]
    socks: Option<String>,
    /// Routed listener: LISTEN=UPSTREAM (both HOST:PORT), repeatable.
    #[arg(long = "route", value_name = "LISTEN=UPSTREAM")]
    routes: Vec<String>,
    /// Server URLs, comma-separated: the next is used after repeated failures.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// Ingest token, bound on the server to --source.
    #[arg(long, env = "VERBATIM_TOKEN", hide_env_values = true)]
    token: String,
    /// This capture point's source id.
    #[arg(long)]
    source: String,
    /// Spool directory.
    #[arg(long)]
    spool: PathBuf,
    /// strict: chat passes only once recorded; relaxed: chat always passes.
    #[arg(long, default_value = "relaxed")]
    mode: Logging,
    /// express: spool written, not fsynced; recoverable: fsynced.
    #[arg(long, default_value = "recoverable")]
    spool_mode: SpoolMode,
    /// Spool size past which new events are refused (and an alarm raised).
    #[arg(long, default_value_t = 1 << 30)]
    spool_max_bytes: u64,
    /// How long strict mode waits for a message to be recorded, in ms.
    #[arg(long, default_value_t = 5000)]
    strict_wait_ms: u64,
    /// Text shown to the user at the start of each conversation, and recorded.
    #[arg(long)]
    disclaimer: Option<String>,
    /// Destinations SOCKS clients may reach (HOST[:PORT], `*` and `*.suffix`
    /// allowed), repeatable; none allows any.
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    allow: Vec<Allow>,
    /// SOCKS5 user (USER:PASSWORD), repeatable; any makes authentication required.
    #[arg(long = "socks-user", value_name = "USER:PASSWORD")]
    socks_users: Vec<String>,
    /// Leave through a corporate proxy: socks5://HOST:PORT or http://HOST:PORT.
    #[arg(long)]
    via: Option<Via>,
    /// Destination ports decoded as IRC.
    #[arg(long, value_delimiter = ',', default_value = "6665,6666,6667,6668,6669,7000")]
    irc_ports: Vec<u16>,
    /// Destination ports decoded as XMPP client-to-server.
    #[arg(long, value_delimiter = ',', default_value = "5222")]
    xmpp_ports: Vec<u16>,
    /// Longest IRC line decoded, in bytes (IRCv3: 8191 of tags + 512).
    #[arg(long, default_value_t = 8704)]
    max_irc_line: usize,
    /// Largest XMPP stanza decoded, in bytes.
    #[arg(long, default_value_t = 256 << 10)]
    max_stanza: usize,
    /// What to do with XMPP's STARTTLS: block (remove the offer, so the
    /// stream stays recordable) or allow (pass TLS, record that it was not captured).
    #[arg(long, default_value = "block")]
    starttls: StartTls,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.socks.is_none() && args.routes.is_empty() {
        bail!("nothing to listen on: give --socks and/or --route");
    }
    let users = (!args.socks_users.is_empty())
        .then(|| {
            args.socks_users
                .iter()
                .map(|u| u.split_once(':').map(|(n, p)| (n.to_owned(), p.to_owned())))
                .collect::<Option<Users>>()
        })
        .map(|u| u.context("--socks-user wants USER:PASSWORD"))
        .transpose()?;
    let spool = SpoolConfig { max_bytes: args.spool_max_bytes, ..SpoolConfig::new(&args.spool, args.spool_mode) };
    let recorder = Recorder::start(RecorderConfig {
        source: args.source.clone(),
        spool,
        sender: SenderConfig {
            // Only strict mode over an express spool waits for the server's
            // acknowledgement; otherwise events may gather for a moment.
            linger: if args.mode == Logging::Strict && args.spool_mode == SpoolMode::Express {
                Duration::ZERO
            } else {
                Duration::from_millis(20)
            },
            ..SenderConfig::new(args.server.clone(), args.token.clone())
        },
        flush_every: Duration::from_secs(1),
        queue: 65_536,
    })
    .with_context(|| format!("opening the spool {}", args.spool.display()))?;
    let proxy = Arc::new(Proxy {
        config: ProxyConfig {
            relay: Arc::new(RelayConfig {
                logging: args.mode,
                strict_wait: Duration::from_millis(args.strict_wait_ms),
                disclaimer: args.disclaimer.clone(),
            }),
            irc_ports: args.irc_ports.clone(),
            xmpp_ports: args.xmpp_ports.clone(),
            max_irc_line: args.max_irc_line,
            max_stanza: args.max_stanza,
            starttls: args.starttls,
            allow: args.allow.clone(),
            users,
            via: args.via.clone().unwrap_or(Via::Direct),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        },
        recorder: recorder.clone(),
    });
    if let Some(addr) = &args.socks {
        let l = TcpListener::bind(addr).await.with_context(|| format!("binding the SOCKS listener {addr}"))?;
        println!("socks listening on {}", l.local_addr()?);
        tokio::spawn(proxy.clone().serve_socks(l));
    }
    for route in &args.routes {
        let (listen, upstream) = route.split_once('=').context("--route wants LISTEN=UPSTREAM")?;
        let target = match upstream.parse() {
            Ok(a) => Target::Addr(a),
            Err(_) => {
                let (h, p) = upstream.rsplit_once(':').context("--route: UPSTREAM wants HOST:PORT")?;
                Target::Domain(h.to_owned(), p.parse().context("--route: UPSTREAM port")?)
            }
        };
        let l = TcpListener::bind(listen).await.with_context(|| format!("binding the routed listener {listen}"))?;
        println!("route listening on {} to {target}", l.local_addr()?);
        tokio::spawn(proxy.clone().serve_routed(l, target));
    }
    println!("mode {:?}, spool {:?} in {}", args.mode, args.spool_mode, args.spool.display());
    verbatim_ingest::wait_for_signal().await;
    tracing::info!("stopping: closing the spool");
    tokio::task::spawn_blocking(move || recorder.shutdown()).await?;
    Ok(())
}
