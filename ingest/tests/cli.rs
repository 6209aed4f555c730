//! `verbatim-proxy` as an operator meets it: usage errors exit 2 with a
//! message that says what is wrong. (The end-to-end tests with real IRC,
//! XMPP and SIP peers live in the workspace's `tests/`, beside the server.)

use std::process::Command;

fn proxy(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_verbatim-proxy")).args(args).output().expect("run verbatim-proxy");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const BASE: [&str; 8] =
    ["--server", "http://127.0.0.1:1", "--token", "t", "--source", "proxy-1", "--spool", "/dev/null/spool"];

#[test]
fn usage_errors_exit_2_and_say_why() {
    let (code, err) = proxy(&BASE);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to listen on"), "{err}");

    let (code, err) = proxy(&[&BASE[..], &["--socks", "127.0.0.1:0", "--mode", "lenient"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("expected strict or relaxed"), "{err}");

    let (code, err) = proxy(&[&BASE[..], &["--socks", "127.0.0.1:0", "--via", "ftp://x:1"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("socks5://HOST:PORT or http://HOST:PORT"), "{err}");

    let (code, err) = proxy(&[&BASE[..], &["--socks", "127.0.0.1:0"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("opening the spool /dev/null/spool"), "{err}");
}
