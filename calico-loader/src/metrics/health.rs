//! Liveness and readiness, as Felix's health aggregator reports them: each component reports
//! whether it is live and ready, and must report again within its deadline; one that misses it
//! counts as neither.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// What a component last said.
#[derive(Clone, Copy, Debug)]
struct Component {
    deadline: Duration,
    reported: Option<(Instant, bool, bool)>,
}

/// The health of the agent's components; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<&'static str, Component>>>,
}

/// Where one component stands, for the health endpoints' bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    pub name: &'static str,
    pub live: bool,
    pub ready: bool,
    /// It did not report within its deadline (or never did).
    pub timed_out: bool,
}

impl Health {
    /// Registers `name`, which must report at least every `deadline`. Until its first report it
    /// is neither live nor ready.
    pub fn register(&self, name: &'static str, deadline: Duration) {
        self.lock().insert(
            name,
            Component {
                deadline,
                reported: None,
            },
        );
    }

    /// `name` reports (a component not registered is registered with a deadline of a minute).
    pub fn report(&self, name: &'static str, live: bool, ready: bool) {
        self.report_at(name, Instant::now(), live, ready);
    }

    fn report_at(&self, name: &'static str, now: Instant, live: bool, ready: bool) {
        self.lock()
            .entry(name)
            .or_insert(Component {
                deadline: Duration::from_secs(60),
                reported: None,
            })
            .reported = Some((now, live, ready));
    }

    /// Every component's state at `now`.
    fn status_at(&self, now: Instant) -> Vec<ComponentStatus> {
        self.lock()
            .iter()
            .map(|(name, c)| {
                let current = c
                    .reported
                    .filter(|(at, _, _)| now.saturating_duration_since(*at) <= c.deadline);
                ComponentStatus {
                    name,
                    live: current.is_some_and(|(_, live, _)| live),
                    ready: current.is_some_and(|(_, _, ready)| ready),
                    timed_out: current.is_none(),
                }
            })
            .collect()
    }

    /// Every component's state now.
    pub fn status(&self) -> Vec<ComponentStatus> {
        self.status_at(Instant::now())
    }

    /// Live: every component reported within its deadline, and live.
    pub fn live(&self) -> bool {
        self.status().iter().all(|c| c.live)
    }

    /// Ready: every component reported within its deadline, and ready.
    pub fn ready(&self) -> bool {
        self.status().iter().all(|c| c.ready)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Component>> {
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_component_is() {
        let health = Health::default();
        let now = Instant::now();
        health.register("loop", Duration::from_secs(10));
        health.register("datastore", Duration::from_secs(10));
        let all = |h: &Health, at| {
            let s = h.status_at(at);
            (s.iter().all(|c| c.live), s.iter().all(|c| c.ready))
        };
        assert_eq!(all(&health, now), (false, false), "nothing reported yet");
        health.report_at("loop", now, true, true);
        health.report_at("datastore", now, true, false);
        assert_eq!(all(&health, now), (true, false));
        health.report_at("datastore", now, true, true);
        assert_eq!(all(&health, now), (true, true));
    }

    #[test]
    fn a_missed_deadline_fails_both() {
        let health = Health::default();
        let now = Instant::now();
        health.register("loop", Duration::from_secs(10));
        health.report_at("loop", now, true, true);
        let late = health.status_at(now + Duration::from_secs(11));
        assert_eq!(
            late,
            vec![ComponentStatus {
                name: "loop",
                live: false,
                ready: false,
                timed_out: true
            }]
        );
    }
}
