//! The CPU priority of the threads that derive stores from the log (ADR 0012).
//!
//! The indexer and the rollup writer run at `SCHED_IDLE` while they keep up,
//! so that on a small machine they never delay the ack path: a thread of
//! normal priority (a request's worker, the log writer, the filesystem's
//! journal thread that every `fdatasync` waits for) takes the CPU from them
//! the moment it wakes. A busy normal-priority thread, by contrast, keeps the
//! CPU for up to a scheduler slice (milliseconds) before a woken one runs.
//!
//! An idle-priority thread gets almost no CPU while normal work fills the
//! machine, so a store that falls more than its configured lag behind the log
//! is run at normal priority until it has caught up. Leaving `SCHED_IDLE`
//! needs a privilege an unprivileged server lacks, so the normal-priority run
//! happens on the supervising thread itself, which never left its priority,
//! and each idle run is a fresh thread: threads inherit their creator's
//! policy, so the threads a store's library starts (tantivy's) follow it.

use std::time::Duration;

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, thread_schedule_policy, NormalThreadSchedulePolicy,
    ThreadPriority, ThreadSchedulePolicy,
};
use tracing::{info, warn};

/// A store's priority settings (`idle_priority`, `max_idle_lag_ms` of
/// `[index]` and `[rollup]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackgroundConfig {
    /// Run at `SCHED_IDLE` while the store keeps up with the log.
    pub idle_priority: bool,
    /// Behind the log by more than this (the age of its oldest record not
    /// yet in the store), the store runs at normal priority until it is
    /// back within a quarter of it.
    pub max_idle_lag_ms: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self { idle_priority: true, max_idle_lag_ms: 3000 }
    }
}

impl BackgroundConfig {
    /// Whether a store `lag_secs` behind, running at `mode`, should switch.
    pub fn should_switch(&self, mode: Mode, lag_secs: f64) -> bool {
        let max = Duration::from_millis(self.max_idle_lag_ms).as_secs_f64();
        match mode {
            Mode::Idle => lag_secs > max,
            Mode::CatchingUp => lag_secs <= max / 4.0,
            Mode::Normal => false,
        }
    }
}

/// The priority a run of a store's work has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `SCHED_IDLE`, until the store falls behind.
    Idle,
    /// Normal priority, until the store has caught up.
    CatchingUp,
    /// Normal priority for good: idle priority is off, or not to be had.
    Normal,
}

/// How a run of a store's work ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The store is stopping.
    Stopped,
    /// The store has fallen behind (or caught up) and wants the other mode.
    Switch,
}

/// Sets the calling thread's policy to `SCHED_IDLE` (and its niceness to
/// 19, which that policy ignores): both are allowed without privilege.
pub fn enter_idle() -> Result<(), String> {
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| format!("{e:?}"))
}

/// Whether the calling thread runs at `SCHED_IDLE`.
pub fn is_idle() -> bool {
    matches!(thread_schedule_policy(), Ok(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)))
}

/// Runs a store's `work` until it returns [`Exit::Stopped`]: at idle
/// priority on a new thread named `<name>-idle` while `config` allows it; after
/// the work asks to switch, on the caller's thread at the caller's priority
/// until it asks again. `switched` hears each change. If idle priority
/// cannot be had, the work runs on the caller in [`Mode::Normal`] for good.
pub fn supervise<F>(name: &str, config: &BackgroundConfig, mut work: F, mut switched: impl FnMut(Mode))
where
    F: FnMut(Mode) -> Exit + Send,
{
    let mut mode = if config.idle_priority { Mode::Idle } else { Mode::Normal };
    loop {
        let exit = match mode {
            Mode::CatchingUp | Mode::Normal => work(mode),
            Mode::Idle => {
                let ran = std::thread::scope(|s| {
                    let t = std::thread::Builder::new().name(format!("{name}-idle")).spawn_scoped(s, || {
                        enter_idle()?;
                        Ok(work(Mode::Idle))
                    });
                    match t {
                        Ok(t) => t.join().unwrap_or_else(|_| Err("its thread panicked".to_string())),
                        Err(e) => Err(format!("starting its thread: {e}")),
                    }
                });
                ran.unwrap_or_else(|e| {
                    warn!(store = name, "cannot run at idle priority, running at normal priority: {e}");
                    mode = Mode::Normal;
                    switched(mode);
                    work(mode)
                })
            }
        };
        match (exit, mode) {
            (Exit::Stopped, _) => return,
            (Exit::Switch, Mode::Normal) => continue,
            (Exit::Switch, Mode::Idle) => mode = Mode::CatchingUp,
            (Exit::Switch, Mode::CatchingUp) => mode = Mode::Idle,
        }
        info!(store = name, priority = ?mode, "switched priority");
        switched(mode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_on_lag_with_hysteresis() {
        let c = BackgroundConfig { idle_priority: true, max_idle_lag_ms: 2000 };
        assert!(!c.should_switch(Mode::Idle, 2.0));
        assert!(c.should_switch(Mode::Idle, 2.001));
        assert!(!c.should_switch(Mode::CatchingUp, 0.6));
        assert!(c.should_switch(Mode::CatchingUp, 0.5));
        assert!(!c.should_switch(Mode::Normal, 0.0));
        assert!(!c.should_switch(Mode::Normal, 1e9));
    }

    /// One run of the work: its mode, whether its thread is at SCHED_IDLE,
    /// whether it ran on the caller, and its thread's name.
    type Run = (Mode, bool, bool, Option<String>);

    fn run_here(caller: std::thread::ThreadId, mode: Mode) -> Run {
        let here = std::thread::current();
        (mode, is_idle(), here.id() == caller, here.name().map(str::to_string))
    }

    #[test]
    fn idle_runs_on_an_idle_thread_and_catching_up_on_the_caller() {
        let caller = std::thread::current().id();
        let mut runs: Vec<Run> = Vec::new();
        let mut switches = Vec::new();
        supervise(
            "bg",
            &BackgroundConfig::default(),
            |mode| {
                runs.push(run_here(caller, mode));
                if runs.len() < 3 {
                    Exit::Switch
                } else {
                    Exit::Stopped
                }
            },
            |m| switches.push(m),
        );
        assert_eq!(
            runs,
            vec![
                (Mode::Idle, true, false, Some("bg-idle".into())),
                (Mode::CatchingUp, false, true, std::thread::current().name().map(str::to_string)),
                (Mode::Idle, true, false, Some("bg-idle".into())),
            ]
        );
        assert_eq!(switches, vec![Mode::CatchingUp, Mode::Idle]);
        // The caller itself never left its priority.
        assert!(!is_idle());
    }

    #[test]
    fn threads_started_by_an_idle_run_inherit_its_priority() {
        let mut seen = None;
        supervise(
            "bg",
            &BackgroundConfig::default(),
            |_| {
                seen = Some(std::thread::spawn(is_idle).join().expect("child"));
                Exit::Stopped
            },
            |_| {},
        );
        assert_eq!(seen, Some(true));
    }

    #[test]
    fn without_idle_priority_the_work_runs_on_the_caller_for_good() {
        let caller = std::thread::current().id();
        let mut runs: Vec<Run> = Vec::new();
        supervise(
            "bg",
            &BackgroundConfig { idle_priority: false, max_idle_lag_ms: 1 },
            |mode| {
                runs.push(run_here(caller, mode));
                // A switch asked for in Normal mode is not one.
                if runs.len() < 2 {
                    Exit::Switch
                } else {
                    Exit::Stopped
                }
            },
            |_| panic!("no switch without idle priority"),
        );
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| r.0 == Mode::Normal && !r.1 && r.2));
    }
}
