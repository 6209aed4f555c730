//! `verbatim-proxy`: the capture proxy (SOCKS and routed listeners).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use verbatim_ingest::frontend::{self, RecorderArgs};
use verbatim_ingest::proxy::{Allow, Proxy, ProxyConfig, Via};
use verbatim_ingest::relay::{Logging, RelayConfig};
use verbatim_ingest::socks::{Target, Users};
use verbatim_ingest::spool::SpoolMode;
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
    #[command(flatten)]
    recorder: RecorderArgs,
    /// strict: chat passes only once recorded; relaxed: chat always passes.
    #[arg(long, default_value = "relaxed")]
    mode: Logging,
    /// express: spool written, not fsynced; recoverable: fsynced.
    #[arg(long, default_value = "recoverable")]
    spool_mode: SpoolMode,
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
    let args = Args::parse();
    frontend::main_with(run(args));
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
    // Only strict mode over an express spool waits for the server's
    // acknowledgement; otherwise events may gather for a moment.
    let linger = if args.mode == Logging::Strict && args.spool_mode == SpoolMode::Express {
        Duration::ZERO
    } else {
        Duration::from_millis(20)
    };
    let recorder = args.recorder.start(args.spool_mode, linger)?;
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
    println!("mode {:?}, spool {:?} in {}", args.mode, args.spool_mode, args.recorder.spool.display());
    frontend::serve_until_signal(recorder).await
}
