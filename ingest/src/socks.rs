//! SOCKS server side: SOCKS4, SOCKS4a and SOCKS5 (RFC 1928) CONNECT, with
//! optional username/password authentication (RFC 1929), and the SOCKS5
//! client side the proxy uses to leave through a corporate SOCKS proxy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where a client wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Domain(String, u16),
}

impl Target {
    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(a) => a.port(),
            Target::Domain(_, p) => *p,
        }
    }

    pub fn host(&self) -> String {
        match self {
            Target::Addr(a) => a.ip().to_string(),
            Target::Domain(d, _) => d.clone(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

/// A client's CONNECT request after a successful handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub version: u8,
    pub target: Target,
    /// The SOCKS5 user name, or the SOCKS4 user id.
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("not a SOCKS request (first byte {0:#04x})")]
    NotSocks(u8),
    #[error("SOCKS{version}: {why}")]
    Refused { version: u8, why: String },
    #[error("SOCKS handshake: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a CONNECT fails, as SOCKS says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    General = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// User names and passwords a client must give (none: no authentication;
/// SOCKS4 has no password, so it is refused when authentication is on).
pub type Users = BTreeMap<String, String>;

/// Reads the client's greeting and request. On a refusal the client has
/// already been told why; the caller closes the connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    users: Option<&Users>,
) -> Result<Request, SocksError> {
    match s.read_u8().await? {
        4 => socks4(s, users).await,
        5 => socks5(s, users).await,
        other => Err(SocksError::NotSocks(other)),
    }
}

async fn socks4<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, users: Option<&Users>) -> Result<Request, SocksError> {
    let cmd = s.read_u8().await?;
    let port = s.read_u16().await?;
    let mut ip = [0u8; 4];
    s.read_exact(&mut ip).await?;
    let user = read_cstr(s).await?;
    let refuse = |why: &str| SocksError::Refused { version: 4, why: why.to_owned() };
    // 0.0.0.x with x ≠ 0: SOCKS4a, the host name follows.
    let target = if ip[..3] == [0, 0, 0] && ip[3] != 0 {
        Target::Domain(read_cstr(s).await?, port)
    } else {
        Target::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
    };
    if cmd != 1 {
        reply(s, 4, Err(Failure::CommandNotSupported)).await?;
        return Err(refuse("only CONNECT is supported"));
    }
    if users.is_some() {
        reply(s, 4, Err(Failure::NotAllowed)).await?;
        return Err(refuse("authentication is required, which SOCKS4 cannot do: use SOCKS5"));
    }
    Ok(Request { version: 4, target, user: (!user.is_empty()).then_some(user) })
}

async fn socks5<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, users: Option<&Users>) -> Result<Request, SocksError> {
    let refuse = |why: String| SocksError::Refused { version: 5, why };
    let n = s.read_u8().await?;
    let mut methods = vec![0u8; n as usize];
    s.read_exact(&mut methods).await?;
    let wanted = if users.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        s.write_all(&[5, 0xff]).await?;
        return Err(refuse(format!("the client offers none of the methods we accept ({wanted})")));
    }
    s.write_all(&[5, wanted]).await?;
    let mut user = None;
    if let Some(users) = users {
        if s.read_u8().await? != 1 {
            s.write_all(&[1, 1]).await?;
            return Err(refuse("bad username/password subnegotiation version".into()));
        }
        let name = read_pstr(s).await?;
        let pass = read_pstr(s).await?;
        let ok = users.get(&name).is_some_and(|p| bool::from(p.as_bytes().ct_eq(pass.as_bytes())));
        if !ok {
            s.write_all(&[1, 1]).await?;
            return Err(refuse(format!("wrong user name or password for `{name}`")));
        }
        s.write_all(&[1, 0]).await?;
        user = Some(name);
    }
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        reply(s, 5, Err(Failure::General)).await?;
        return Err(refuse(format!("request version {}", head[0])));
    }
    let target = match head[3] {
        1 => {
            let mut ip = [0u8; 4];
            s.read_exact(&mut ip).await?;
            Target::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), s.read_u16().await?))
        }
        3 => Target::Domain(read_pstr(s).await?, s.read_u16().await?),
        4 => {
            let mut ip = [0u8; 16];
            s.read_exact(&mut ip).await?;
            Target::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), s.read_u16().await?))
        }
        t => {
            reply(s, 5, Err(Failure::AddressTypeNotSupported)).await?;
            return Err(refuse(format!("address type {t}")));
        }
    };
    if head[1] != 1 {
        reply(s, 5, Err(Failure::CommandNotSupported)).await?;
        return Err(refuse(format!("command {} (only CONNECT is supported)", head[1])));
    }
    Ok(Request { version: 5, target, user })
}

/// Tells the client how its CONNECT went.
pub async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    version: u8,
    outcome: Result<SocketAddr, Failure>,
) -> std::io::Result<()> {
    let bound = outcome.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut out = Vec::with_capacity(22);
    if version == 4 {
        let ip = match bound.ip() {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => [0; 4],
        };
        out.extend_from_slice(&[0, if outcome.is_ok() { 0x5a } else { 0x5b }]);
        out.extend_from_slice(&bound.port().to_be_bytes());
        out.extend_from_slice(&ip);
    } else {
        out.extend_from_slice(&[5, outcome.err().map_or(0, |f| f as u8), 0]);
        match bound.ip() {
            IpAddr::V4(v4) => {
                out.push(1);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(4);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&bound.port().to_be_bytes());
    }
    s.write_all(&out).await?;
    s.flush().await
}

/// The client side of a SOCKS5 CONNECT (no authentication), through a
/// corporate proxy already connected as `s`.
pub async fn connect_via<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, target: &Target) -> std::io::Result<()> {
    let err = |why: String| std::io::Error::other(format!("corporate SOCKS5 proxy: {why}"));
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    if m != [5, 0] {
        return Err(err(format!("refused the no-authentication method ({m:?})")));
    }
    let mut req = vec![5, 1, 0];
    match target {
        Target::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        Target::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
        Target::Domain(d, _) => {
            let len = u8::try_from(d.len()).map_err(|_| err(format!("host name of {} bytes", d.len())))?;
            req.push(3);
            req.push(len);
            req.extend_from_slice(d.as_bytes());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(err(format!("CONNECT {target} failed with code {}", head[1])));
    }
    let skip = match head[3] {
        1 => 4,
        4 => 16,
        3 => usize::from(s.read_u8().await?),
        t => return Err(err(format!("address type {t} in its reply"))),
    };
    let mut rest = vec![0u8; skip + 2];
    s.read_exact(&mut rest).await?;
    Ok(())
}

async fn read_cstr<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut out = Vec::new();
    loop {
        match s.read_u8().await? {
            0 => break,
            b if out.len() < 255 => out.push(b),
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a SOCKS4 string over 255 bytes")),
        }
    }
    String::from_utf8(out)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a SOCKS4 string not UTF-8"))
}

async fn read_pstr<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let n = s.read_u8().await?;
    let mut out = vec![0u8; n as usize];
    s.read_exact(&mut out).await?;
    String::from_utf8(out)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a SOCKS5 string not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8], users: Option<&Users>) -> (Result<Request, SocksError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(input).await.expect("write");
        drop(client.shutdown().await);
        let got = accept(&mut server, users).await;
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        (got, answer)
    }

    #[tokio::test]
    async fn socks4_socks4a_and_socks5_requests() {
        let (r, _) = run(&[4, 1, 0x1a, 0x0b, 127, 0, 0, 1, b'u', 0], None).await;
        let r = r.expect("socks4");
        assert_eq!((r.version, r.target.to_string(), r.user.as_deref()), (4, "127.0.0.1:6667".into(), Some("u")));
        let (r, _) = run(b"\x04\x01\x1a\x0b\x00\x00\x00\x01\x00irc.example\x00", None).await;
        assert_eq!(r.expect("socks4a").target, Target::Domain("irc.example".into(), 6667));
        let (r, answer) = run(b"\x05\x01\x00\x05\x01\x00\x03\x0birc.example\x1a\x0b", None).await;
        assert_eq!(r.expect("socks5").target, Target::Domain("irc.example".into(), 6667));
        assert_eq!(answer, vec![5, 0]);
        let v6 = [&[5u8, 1, 0, 5, 1, 0, 4][..], &[0; 15], &[1, 0x14, 0x66]].concat();
        assert_eq!(run(&v6, None).await.0.expect("v6").target.to_string(), "[::1]:5222");
    }

    #[tokio::test]
    async fn authentication_is_checked() {
        let users: Users = [("alice".to_owned(), "s3cret".to_owned())].into();
        let ok = b"\x05\x01\x02\x01\x05alice\x06s3cret\x05\x01\x00\x01\x7f\x00\x00\x01\x1a\x0b";
        let (r, answer) = run(ok, Some(&users)).await;
        assert_eq!(r.expect("auth").user.as_deref(), Some("alice"));
        assert_eq!(answer, vec![5, 2, 1, 0]);
        let (r, answer) = run(b"\x05\x01\x02\x01\x05alice\x05wrong", Some(&users)).await;
        assert!(matches!(r, Err(SocksError::Refused { version: 5, .. })));
        assert_eq!(answer, vec![5, 2, 1, 1]);
        let (r, answer) = run(b"\x05\x01\x00", Some(&users)).await;
        assert!(r.is_err());
        assert_eq!(answer, vec![5, 0xff], "no acceptable method");
        let (r, answer) = run(&[4, 1, 0x1a, 0x0b, 127, 0, 0, 1, 0], Some(&users)).await;
        assert!(r.is_err());
        assert_eq!(answer[1], 0x5b, "SOCKS4 cannot authenticate");
    }

    #[tokio::test]
    async fn malformed_handshakes_are_errors_not_panics() {
        for input in [
            &b""[..],
            b"\x16\x03\x01",
            b"GET / HTTP/1.1\r\n",
            b"\x05",
            b"\x05\x02\x00",
            b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
            b"\x05\x01\x00\x05\x01\x00\x09",
            b"\x05\x01\x00\x05\x01\x00\x03\x10short",
            b"\x04\x01\x00\x50\x7f\x00\x00\x01no-terminator",
            b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00",
        ] {
            assert!(run(input, None).await.0.is_err(), "{input:?}");
        }
        let (r, answer) = run(b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", None).await;
        assert!(r.is_err());
        assert_eq!(answer[2..4], [5, 7], "BIND is answered `command not supported`");
    }
}
