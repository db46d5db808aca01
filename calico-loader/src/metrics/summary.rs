//! A Prometheus summary over a sliding window, as Felix exports its apply times: quantiles
//! 0.5, 0.9 and 0.99 of the recent observations, with the sum and count of all of them.
//! The `prometheus` crate has histograms but no summary type.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Metric, MetricFamily, MetricType, Quantile, Summary},
};

/// The quantiles Felix exports.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// How long an observation counts towards the quantiles (Felix's summaries keep 10 minutes).
pub const WINDOW: Duration = Duration::from_secs(600);

/// The most observations kept for the quantiles, whatever their age.
pub const MAX_SAMPLES: usize = 4096;

#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<(Instant, f64)>,
    sum: f64,
    count: u64,
}

/// A summary metric; clones share their observations.
#[derive(Clone, Debug)]
pub struct SlidingSummary {
    desc: Desc,
    window: Duration,
    state: Arc<Mutex<Window>>,
}

impl SlidingSummary {
    /// # Errors
    ///
    /// `name` or `help` not valid for Prometheus.
    pub fn new(name: &str, help: &str) -> prometheus::Result<Self> {
        Self::with_window(name, help, WINDOW)
    }

    /// The same, with observations counting towards the quantiles for `window`.
    ///
    /// # Errors
    ///
    /// `name` or `help` not valid for Prometheus.
    pub fn with_window(name: &str, help: &str, window: Duration) -> prometheus::Result<Self> {
        Ok(Self {
            desc: Desc::new(
                name.to_owned(),
                help.to_owned(),
                Vec::new(),
                Default::default(),
            )?,
            window,
            state: Arc::default(),
        })
    }

    /// Records one observation (seconds, for a duration).
    pub fn observe(&self, value: f64) {
        self.observe_at(Instant::now(), value);
    }

    fn observe_at(&self, now: Instant, value: f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.samples.push_back((now, value));
        if state.samples.len() > MAX_SAMPLES {
            state.samples.pop_front();
        }
        state.sum += value;
        state.count += 1;
    }

    /// The quantiles of the observations of the window ending at `now` (NaN when there are
    /// none, as Prometheus' own summaries report), the sum and the count of all observations.
    fn snapshot_at(&self, now: Instant) -> (Vec<(f64, f64)>, f64, u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.window)
        {
            state.samples.pop_front();
        }
        let mut values: Vec<f64> = state.samples.iter().map(|(_, v)| *v).collect();
        values.sort_by(f64::total_cmp);
        let quantiles = QUANTILES
            .iter()
            .map(|&q| (q, quantile(&values, q)))
            .collect();
        (quantiles, state.sum, state.count)
    }
}

/// The `q` quantile of sorted `values`: the smallest value with at least `q` of them at or
/// below it (NaN for none).
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

impl Collector for SlidingSummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (quantiles, sum, count) = self.snapshot_at(Instant::now());
        let mut summary = Summary::default();
        summary.set_sample_sum(sum);
        summary.set_sample_count(count);
        summary.set_quantile(
            quantiles
                .into_iter()
                .map(|(q, v)| {
                    let mut quantile = Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(v);
                    quantile
                })
                .collect(),
        );
        let mut metric = Metric::default();
        metric.set_summary(summary);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_the_window() {
        let summary = SlidingSummary::new("test_seconds", "Test.").expect("summary");
        for i in 1..=100 {
            summary.observe(f64::from(i));
        }
        let (quantiles, sum, count) = summary.snapshot_at(Instant::now());
        assert_eq!(quantiles, vec![(0.5, 50.0), (0.9, 90.0), (0.99, 99.0)]);
        assert_eq!(sum, 5050.0);
        assert_eq!(count, 100);
    }

    #[test]
    fn old_observations_leave_the_quantiles_but_not_sum_and_count() {
        let summary = SlidingSummary::with_window("test_seconds", "Test.", Duration::from_secs(60))
            .expect("summary");
        let start = Instant::now();
        summary.observe_at(start, 10.0);
        summary.observe_at(start + Duration::from_secs(50), 1.0);
        let (quantiles, sum, count) = summary.snapshot_at(start + Duration::from_secs(90));
        assert_eq!(quantiles[0], (0.5, 1.0));
        assert_eq!(quantiles[2], (0.99, 1.0));
        assert_eq!((sum, count), (11.0, 2));
        let (quantiles, _, count) = summary.snapshot_at(start + Duration::from_secs(200));
        assert!(quantiles.iter().all(|(_, v)| v.is_nan()));
        assert_eq!(count, 2);
    }

    #[test]
    fn written_as_a_summary() {
        let summary = SlidingSummary::new("felix_int_dataplane_apply_time_seconds", "Apply time.")
            .expect("summary");
        summary.observe(0.25);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(summary)).expect("register");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        for line in [
            "# TYPE felix_int_dataplane_apply_time_seconds summary",
            "felix_int_dataplane_apply_time_seconds{quantile=\"0.5\"} 0.25",
            "felix_int_dataplane_apply_time_seconds{quantile=\"0.9\"} 0.25",
            "felix_int_dataplane_apply_time_seconds{quantile=\"0.99\"} 0.25",
            "felix_int_dataplane_apply_time_seconds_sum 0.25",
            "felix_int_dataplane_apply_time_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
