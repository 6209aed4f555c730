//! A deterministic simulation of log shipping: a site's log and HQ's replicas
//! on in-memory storage, the shipper's own decisions (`resume_point`,
//! `shipment`), and a network that loses requests and answers, delays
//! shipments and delivers them late, duplicates them, and partitions; both
//! sides crash (power loss mid-write, unsynced bytes torn) and recover, and
//! HQ is sometimes restored from an older backup. Many
//! seeds, and after every step a checker:
//!
//! - HQ holds a gap-free prefix of the site's durable log: every offset below
//!   HQ's high water holds the site's record, byte for byte;
//! - no offset ever holds two different records at HQ, across crashes;
//! - an acknowledged high water survives HQ's crashes (not a restore from an
//!   older backup, after which the shipper re-ships);
//! - no refusal other than a gap is ever answered to a correct shipper, and
//!   the shipper never sees a fork.
//!
//! At the end of each seed the network heals and HQ must catch up to the
//! whole log with the same chain. `VERBATIM_SIM_SEEDS` sets the number of
//! seeds (default 40), `VERBATIM_SIM_STEPS` the steps per seed (default 300).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use verbatim_schema::{Offset, SiteId};

use super::shipper::{resume_point, shipment, Resume};
use super::{ReceiveError, Replicas, SiteReport};
use crate::log::io::MemStorage;
use crate::log::tests::{record, small_config};
use crate::log::{Log, LogReader};

const SITE: &str = "nyc";
const SITE_DIR: &str = "/site/log";
const HQ_DIR: &str = "/hq/replicas";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sim {
    rng: StdRng,
    site_storage: MemStorage,
    site: Option<Log>,
    hq_storage: MemStorage,
    hq: Option<Arc<Replicas>>,
    /// A backup of HQ's storage, taken at some step, to restore HQ from.
    backup: Option<MemStorage>,
    /// The shipper's in-memory state: synced with HQ, and its cursor.
    synced: bool,
    cursor: u64,
    /// Shipments sent but not yet delivered (delayed in the network).
    in_flight: Vec<Vec<u8>>,
    /// Requests still to be lost by the current partition.
    partition: u32,
    /// The highest high water HQ ever acknowledged.
    acked: u64,
    /// A hash of the record HQ held at each offset, the first time it was seen.
    ledger: Vec<u64>,
    next_record: u64,
    batch_bytes: usize,
    events: Counts,
}

#[derive(Debug, Default)]
struct Counts {
    appends: u64,
    shipments: u64,
    lost: u64,
    answers_lost: u64,
    delayed: u64,
    late: u64,
    duplicated: u64,
    gaps: u64,
    hq_crashes: u64,
    hq_restores: u64,
    site_crashes: u64,
    failed_writes: u64,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn record_bytes(r: &LogReader, o: u64) -> Vec<u8> {
    let b = r.block_at(Offset(o)).expect("block");
    b.bytes((o - b.first.0) as usize).to_vec()
}

impl Sim {
    fn new(seed: u64) -> Self {
        let site_storage = MemStorage::new();
        let hq_storage = MemStorage::new();
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            site_storage,
            site: None,
            hq_storage,
            hq: None,
            backup: None,
            synced: false,
            cursor: 0,
            in_flight: Vec::new(),
            partition: 0,
            acked: 0,
            ledger: Vec::new(),
            next_record: 0,
            batch_bytes: 0,
            events: Counts::default(),
        };
        sim.batch_bytes = sim.rng.random_range(300..6000);
        sim.open_site();
        sim.open_hq();
        sim
    }

    fn open_site(&mut self) {
        self.site = Some(
            Log::open(Arc::new(self.site_storage.clone()), Path::new(SITE_DIR), small_config()).expect("site log"),
        );
        // A restarted shipper knows nothing until HQ tells it.
        self.synced = false;
    }

    fn open_hq(&mut self) {
        self.hq = Some(
            Replicas::open(Arc::new(self.hq_storage.clone()), Path::new(HQ_DIR), small_config()).expect("replicas"),
        );
        self.synced = false;
    }

    fn site(&mut self) -> &mut Log {
        self.site.as_mut().expect("site open")
    }

    fn hq(&self) -> &Arc<Replicas> {
        self.hq.as_ref().expect("hq open")
    }

    fn append(&mut self) -> Result<(), crate::log::LogError> {
        let n = self.rng.random_range(1..12u64);
        let len = self.rng.random_range(0..300usize);
        let first = self.next_record;
        let batch: Vec<_> = (first..first + n)
            .map(|k| {
                let mut r = record(k, len);
                r.site = SiteId::new(SITE);
                r
            })
            .collect();
        self.site().append(&mut [batch])?;
        self.next_record += n;
        self.events.appends += 1;
        if self.rng.random_ratio(1, 8) {
            self.site().seal_pending()?;
        }
        Ok(())
    }

    /// Delivers one shipment to HQ: the answer, if the site gets it.
    fn deliver(&mut self, body: &[u8]) -> Result<u64, ReceiveError> {
        let r = self.hq().receive(SITE, body, SiteReport::default()).map(|(_, hw)| hw.high_water);
        match &r {
            Ok(hw) => self.acked = self.acked.max(*hw),
            Err(ReceiveError::Gap { .. }) => self.events.gaps += 1,
            Err(ReceiveError::Failed(_)) => self.events.failed_writes += 1,
            Err(e @ (ReceiveError::Corrupt { .. } | ReceiveError::Fork { .. })) => {
                panic!("HQ refused a correct shipper's shipment: {e}")
            }
        }
        r
    }

    /// One step of the shipper, through the network's fate.
    fn ship(&mut self) {
        if self.partition > 0 {
            self.partition -= 1;
            self.synced = false;
            self.events.lost += 1;
            return;
        }
        if !self.synced {
            if self.rng.random_ratio(1, 10) {
                self.events.lost += 1;
                return;
            }
            let hw = self.hq().high_water(SITE).expect("high water");
            let reader = self.site.as_ref().expect("site").reader();
            match resume_point(&reader, &hw) {
                Ok(c) => {
                    self.cursor = c;
                    self.synced = true;
                }
                Err(Resume::Fork(why)) => panic!("the shipper saw a fork: {why}"),
                Err(Resume::Failed(why)) => panic!("the site's log could not be read: {why}"),
            }
            return;
        }
        let reader = self.site.as_ref().expect("site").reader();
        let Some((body, end)) = shipment(&reader, self.cursor, self.batch_bytes, 3).expect("shipment") else {
            return;
        };
        self.events.shipments += 1;
        match self.rng.random_range(0..100) {
            0..10 => {
                // The request is lost: a timeout, then a resync.
                self.events.lost += 1;
                self.synced = false;
            }
            10..20 => {
                // Held up in the network; the shipper times out.
                self.events.delayed += 1;
                self.in_flight.push(body);
                self.synced = false;
            }
            20..30 => {
                // HQ applies it; the answer is lost.
                self.events.answers_lost += 1;
                let _ = self.deliver(&body);
                self.synced = false;
            }
            30..35 => {
                self.events.duplicated += 1;
                let _ = self.deliver(&body);
                self.answer(end, &body);
            }
            _ => self.answer(end, &body),
        }
    }

    fn answer(&mut self, end: u64, body: &[u8]) {
        match self.deliver(body) {
            Ok(hw) => {
                assert_eq!(hw, end, "HQ acknowledged {hw} after a shipment up to {end}");
                self.cursor = end;
            }
            Err(_) => self.synced = false,
        }
    }

    fn deliver_late(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.in_flight.len());
        let body = self.in_flight.swap_remove(i);
        self.events.late += 1;
        let _ = self.deliver(&body);
    }

    /// Power loss at HQ, perhaps in the middle of writing a shipment.
    fn crash_hq(&mut self) {
        self.events.hq_crashes += 1;
        if self.synced && self.rng.random_bool(0.5) {
            let reader = self.site.as_ref().expect("site").reader();
            if let Some((body, _)) = shipment(&reader, self.cursor, self.batch_bytes, 3).expect("shipment") {
                self.hq_storage.die_after(self.rng.random_range(0..4));
                if self.hq().receive(SITE, &body, SiteReport::default()).is_err() {
                    self.events.failed_writes += 1;
                }
            }
        }
        self.hq = None;
        let keep = self.rng.random_range(0..=255usize);
        self.hq_storage.crash(|n| n * keep / 255);
        self.hq_storage.clear_faults();
        self.open_hq();
        let hw = self.hq().high_water(SITE).expect("high water").high_water;
        assert!(hw >= self.acked, "HQ acknowledged {} and came back holding {hw}", self.acked);
    }

    /// HQ restored from an older backup: it holds less than it acknowledged,
    /// and the shipper must re-ship from there.
    fn restore_hq(&mut self) {
        let Some(backup) = &self.backup else {
            self.backup = Some(self.hq_storage.snapshot());
            return;
        };
        self.events.hq_restores += 1;
        self.hq = None;
        self.hq_storage = backup.snapshot();
        self.hq_storage.crash(|_| 0);
        self.open_hq();
        self.acked = self.hq().high_water(SITE).expect("high water").high_water;
    }

    /// Power loss at the site, perhaps in the middle of an append.
    fn crash_site(&mut self) {
        self.events.site_crashes += 1;
        if self.rng.random_bool(0.5) {
            self.site_storage.die_after(self.rng.random_range(0..4));
            let _ = self.append();
        }
        self.site = None;
        let keep = self.rng.random_range(0..=255usize);
        self.site_storage.crash(|n| n * keep / 255);
        self.site_storage.clear_faults();
        self.open_site();
        self.next_record = self.site.as_ref().expect("site").head().0;
    }

    /// HQ holds a prefix of the site's durable log, and every offset it holds
    /// still has the record it had when first seen.
    fn check(&mut self) {
        let site = self.site.as_ref().expect("site").reader();
        let Some(hq) = self.hq().reader(SITE) else {
            assert_eq!(self.acked, 0);
            return;
        };
        let hw = hq.head().0;
        assert!(hw <= site.head().0, "HQ holds {hw} records, the site's durable log {}", site.head().0);
        assert!(hw >= self.acked, "HQ holds {hw} records after acknowledging {}", self.acked);
        // New offsets join the ledger; the last few known are re-read every step.
        let from = (self.ledger.len() as u64).saturating_sub(8).min(hw);
        for o in from..hw {
            let bytes = record_bytes(&hq, o);
            assert_eq!(bytes, record_bytes(&site, o), "offset {o}: HQ's record is not the site's");
            let h = hash(&bytes);
            match self.ledger.get(o as usize) {
                Some(&seen) => assert_eq!(seen, h, "offset {o} held two different records at HQ"),
                None => self.ledger.push(h),
            }
        }
    }

    /// After a crash the whole of HQ's copy is checked against the ledger.
    fn check_all(&mut self) {
        let site = self.site.as_ref().expect("site").reader();
        if let Some(hq) = self.hq().reader(SITE) {
            for o in 0..hq.head().0.min(self.ledger.len() as u64) {
                let bytes = record_bytes(&hq, o);
                assert_eq!(hash(&bytes), self.ledger[o as usize], "offset {o} held two different records at HQ");
                assert_eq!(bytes, record_bytes(&site, o), "offset {o}: HQ's record is not the site's");
            }
        }
        self.check();
    }

    fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..30 => {
                self.append().expect("append");
            }
            30..75 => self.ship(),
            75..85 => self.deliver_late(),
            85..89 => {
                self.crash_hq();
                self.check_all();
            }
            89..93 => {
                self.crash_site();
                self.check_all();
            }
            93..95 => self.partition = self.rng.random_range(1..20),
            95 => {
                self.restore_hq();
                self.check_all();
            }
            _ => {
                // A restart of the regional server without power loss.
                self.site = None;
                self.open_site();
            }
        }
        self.check();
    }

    /// The network heals: the shipper catches up, and HQ's copy is the log.
    fn heal(&mut self) {
        self.partition = 0;
        for _ in 0..10_000 {
            let head = self.site.as_ref().expect("site").head().0;
            if self.synced && self.cursor == head {
                break;
            }
            if !self.synced {
                let hw = self.hq().high_water(SITE).expect("high water");
                let reader = self.site.as_ref().expect("site").reader();
                self.cursor = resume_point(&reader, &hw).expect("resume");
                self.synced = true;
                continue;
            }
            let reader = self.site.as_ref().expect("site").reader();
            let (body, end) =
                shipment(&reader, self.cursor, self.batch_bytes, 3).expect("read").expect("something to ship");
            self.answer(end, &body);
        }
        let site = self.site.as_ref().expect("site").reader();
        let hq = self.hq().reader(SITE);
        let head = site.head().0;
        if head > 0 {
            let hq = hq.expect("HQ holds the site");
            assert_eq!(hq.head().0, head, "HQ did not catch up");
            assert_eq!(hq.chain_at(hq.head()).expect("chain"), site.chain_at(site.head()).expect("chain"));
        }
        // Late shipments after the catch-up change nothing.
        while !self.in_flight.is_empty() {
            self.deliver_late();
        }
        self.check_all();
    }
}

#[test]
fn partitions_crashes_and_a_lossy_network_never_leave_hq_with_anything_but_a_prefix_of_the_site() {
    let seeds = env_or("VERBATIM_SIM_SEEDS", 40);
    let steps = env_or("VERBATIM_SIM_STEPS", 300);
    let mut total = Counts::default();
    for seed in 0..seeds {
        let mut sim = Sim::new(seed);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps {
                sim.step();
            }
            sim.heal();
        }));
        if let Err(e) = run {
            eprintln!("seed {seed} failed (rerun: VERBATIM_SIM_SEEDS={} and this seed)", seed + 1);
            std::panic::resume_unwind(e);
        }
        let c = &sim.events;
        total.appends += c.appends;
        total.shipments += c.shipments;
        total.lost += c.lost;
        total.answers_lost += c.answers_lost;
        total.delayed += c.delayed;
        total.late += c.late;
        total.duplicated += c.duplicated;
        total.gaps += c.gaps;
        total.hq_crashes += c.hq_crashes;
        total.hq_restores += c.hq_restores;
        total.site_crashes += c.site_crashes;
        total.failed_writes += c.failed_writes;
    }
    eprintln!("{seeds} seeds × {steps} steps: {total:?}");
    // The simulation exercised what it claims to.
    assert!(total.answers_lost > 0 && total.late > 0 && total.duplicated > 0 && total.gaps > 0, "{total:?}");
    assert!(total.hq_crashes > 0 && total.hq_restores > 0 && total.site_crashes > 0, "{total:?}");
    assert!(total.failed_writes > 0, "no crash hit HQ mid-write: {total:?}");
}
