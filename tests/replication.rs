//! Log shipping between two real servers on loopback: a regional site
//! ingesting with the load generator ships to HQ while each side is killed
//! with SIGKILL and restarted; afterwards HQ's copy holds the same records at
//! the same offsets with the same chain head, and bad shipments are refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, create_token, free_addr, loadgen, run, stderr, stdout, Server};
use serde_json::Value;

const SITE: &str = "nyc";

fn replica_token(hq: &Path, site: &str) -> String {
    let out = run(hq, &["token", "create", "--role", "replica", "--site", site]);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn regional_env(hq: &Server, token: &str) -> Vec<(String, String)> {
    vec![
        ("VERBATIM_SITE_ID".into(), SITE.into()),
        ("VERBATIM_SITE_ROLE".into(), "regional".into()),
        ("VERBATIM_HQ_URL".into(), format!("http://{}", hq.addr)),
        ("VERBATIM_HQ_TOKEN".into(), token.into()),
        ("VERBATIM_LOG".into(), "error".into()),
    ]
}

fn start(data: &Path, addr: std::net::SocketAddr, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_env(data, addr, &[], &env)
}

fn hq_env() -> Vec<(String, String)> {
    vec![("VERBATIM_SITE_ROLE".into(), "hq".into()), ("VERBATIM_LOG".into(), "error".into())]
}

fn status(s: &Server, token: &str) -> Value {
    let (code, body) = s.get_with("/v1/status", token).expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// `verbatim dump` of a log directory (through a data dir whose `log` points at it).
fn dump(log_dir: &Path, scratch: &Path) -> Vec<u8> {
    std::fs::create_dir_all(scratch).expect("scratch");
    let link = scratch.join("log");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(log_dir, &link).expect("symlink");
    let out = run(scratch, &["dump"]);
    assert!(out.status.success(), "dump: {}", stderr(&out));
    out.stdout
}

/// `verbatim verify` on `data`: the (head, chain) of each log it printed.
fn verify(data: &Path) -> Vec<String> {
    let out = run(data, &["verify"]);
    assert!(out.status.success(), "verify: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .filter(|l| l.contains("chain"))
        .map(|l| l.split("head").nth(1).unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn a_site_ships_100k_events_to_hq_through_kills_of_either_side_and_hq_holds_the_same_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (hq_dir, site_dir) = (tmp.path().join("hq"), tmp.path().join("site"));
    let replica = replica_token(&hq_dir, SITE);
    let hq_admin = create_token(&hq_dir, "admin", None);
    let ingest = create_token(&site_dir, "ingest", Some("loadgen-*"));
    let site_admin = create_token(&site_dir, "admin", None);
    let (hq_addr, site_addr) = (free_addr(), free_addr());
    let mut hq = start(&hq_dir, hq_addr, &hq_env());
    let env = regional_env(&hq, &replica);
    let mut site = start(&site_dir, site_addr, &env);

    // The load generator writes 100k events in the background while both
    // sides are killed and restarted.
    let state = tmp.path().join("loadgen.state");
    let acks = tmp.path().join("acks.ndjson");
    let total = 100_000u64;
    let spawn_loadgen = |events: u64| {
        Command::new(loadgen())
            .args(["run", "--url", &format!("http://{site_addr}"), "--token", &ingest, "--clients", "2"])
            .args(["--batch", "500", "--events", &events.to_string()])
            .arg("--state")
            .arg(&state)
            .arg("--acks")
            .arg(&acks)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("loadgen")
    };
    let mut gen = spawn_loadgen(total);
    let wait_head = |s: &Server, at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if let Ok((200, b)) = s.get("/healthz") {
                let v: Value = serde_json::from_str(&b).expect("json");
                if v["log_head"].as_u64().unwrap_or(0) >= at_least {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the site's log did not reach {at_least}");
    };
    wait_head(&site, 20_000);
    hq.kill9();
    std::thread::sleep(Duration::from_millis(300));
    hq = start(&hq_dir, hq_addr, &hq_env());
    wait_head(&site, 45_000);
    hq.kill9();
    hq = start(&hq_dir, hq_addr, &hq_env());
    wait_head(&site, 60_000);
    // The site itself dies mid-shipping; the load generator is stopped with
    // it and resumed (its state file keeps the sequence numbers).
    let _ = gen.kill();
    let _ = gen.wait();
    site.kill9();
    site = start(&site_dir, site_addr, &env);
    let sent: u64 = std::fs::read_to_string(&acks).map(|s| s.lines().count() as u64).unwrap_or(0);
    gen = spawn_loadgen(total.saturating_sub(sent));
    assert!(gen.wait().expect("loadgen").success(), "the load generator failed");

    // Everything acknowledged reaches HQ.
    let deadline = Instant::now() + Duration::from_secs(300);
    let head = loop {
        let st = status(&site, &site_admin);
        let sh = &st["shipping"];
        let head = st["log"]["head"].as_u64().expect("head");
        if sh["lag_events"] == 0 && sh["cursor"].as_u64() == Some(head) {
            assert_eq!(sh["alarms"], serde_json::json!([]), "{sh}");
            break head;
        }
        assert!(Instant::now() < deadline, "shipping did not catch up: {sh}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(head >= 60_000, "the site holds {head} events");
    let hq_status = status(&hq, &hq_admin);
    let replicas = hq_status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{hq_status}");
    assert_eq!(replicas[0]["site"], SITE);
    assert_eq!(replicas[0]["high_water"].as_u64(), Some(head));
    assert_eq!(replicas[0]["forks"], 0);
    let (code, metrics) = hq.get_with("/metrics", &hq_admin).expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains(&format!("verbatim_replica_high_water{{site=\"{SITE}\"}} {head}")), "{metrics}");

    // compare-hq: the same chain at HQ's high-water mark.
    let mut cmp = Command::new(bin());
    cmp.arg("--data-dir").arg(&site_dir).arg("compare-hq");
    for (k, v) in &env {
        cmp.env(k, v);
    }
    let out = cmp.output().expect("compare-hq");
    assert!(out.status.success(), "compare-hq: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("same chain"), "{}", stdout(&out));

    // Stopped cleanly, both logs verify, with the same head and chain, and
    // hold the same records byte for byte.
    let (st, err) = site.stop();
    assert!(st.success(), "{err}");
    let (st, err) = hq.stop();
    assert!(st.success(), "{err}");
    let site_v = verify(&site_dir);
    let hq_v = verify(&hq_dir);
    assert_eq!(hq_v.len(), 2, "HQ's own log and the replica: {hq_v:?}");
    assert_eq!(site_v[0], hq_v[1], "head and chain of the site vs HQ's replica");
    let a = dump(&site_dir.join("log"), &tmp.path().join("d1"));
    let b = dump(&hq_dir.join("replicas").join(SITE), &tmp.path().join("d2"));
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count() as u64, head);
    assert!(a == b, "the replica's records differ from the site's");
    // Every acknowledged event is in HQ's copy exactly once, byte-exact.
    let archive = tmp.path().join("hq-dump.ndjson");
    std::fs::write(&archive, &b).expect("write dump");
    let out = Command::new(loadgen())
        .arg("check")
        .arg("--acks")
        .arg(&acks)
        .arg("--archive")
        .arg(&archive)
        .output()
        .expect("check");
    assert!(out.status.success(), "check: {}{}", stdout(&out), stderr(&out));
}

#[test]
fn hq_refuses_wrong_sites_bad_shipments_and_servers_that_are_not_hq_refuse_shipments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hq_dir = tmp.path().join("hq");
    let nyc = replica_token(&hq_dir, SITE);
    let auditor = create_token(&hq_dir, "auditor", None);
    let hq = start(&hq_dir, free_addr(), &hq_env());
    let post = |site: &str, token: &str, body: &[u8]| {
        let auth = format!("Bearer {token}");
        hq.request("POST", &format!("/v1/replication/{site}/blocks"), &[("Authorization", &auth)], body).expect("post")
    };
    let (code, _, body) = post("lon", &nyc, b"");
    assert_eq!(code, 403, "a token for nyc shipping lon: {body}");
    let (code, _, body) = post(SITE, &auditor, b"");
    assert_eq!(code, 403, "an auditor token: {body}");
    let (code, _, body) =
        post(SITE, &nyc, b"VBLK not really a block, just text that is long enough for a header......");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("block 0"), "{body}");
    let (code, body) = hq.get_with(&format!("/v1/replication/{SITE}"), &nyc).expect("get");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["high_water"], 0, "nothing applied: {v}");
    let (code, _) = hq.get(&format!("/v1/replication/{SITE}")).expect("get");
    assert_eq!(code, 401);

    // A standalone server has no replication endpoint.
    let other_dir = tmp.path().join("standalone");
    let admin = create_token(&other_dir, "admin", None);
    let other = Server::start(&other_dir);
    let (code, body) = other.get_with(&format!("/v1/replication/{SITE}"), &admin).expect("get");
    assert_eq!(code, 404, "{body}");
    // A regional config without HQ settings does not start.
    let out = Command::new(bin())
        .arg("--data-dir")
        .arg(tmp.path().join("bad"))
        .arg("serve")
        .env("VERBATIM_SITE_ROLE", "regional")
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("site.hq_url"), "{}", stderr(&out));
}
