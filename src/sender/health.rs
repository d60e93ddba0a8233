//! What the sender reports: stats, health, the Prometheus rendering.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::RingStats;

/// The sender's overall condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Records flow (or there are none to send).
    Healthy,
    /// The last send failed; the sender is retrying.
    Degraded,
    /// Records are pending and nothing was acknowledged for `stall_after`.
    Stalled,
    /// The sender was shut down.
    Stopped,
}

/// A snapshot of the sender's health.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The condition.
    pub state: HealthState,
    /// How long the current stall has lasted, when stalled.
    pub stalled_for: Option<Duration>,
    /// Records pending in the ring.
    pub pending: u64,
    /// Time since the last acknowledgement by an endpoint (`None`: none yet).
    pub since_last_ack: Option<Duration>,
    /// The latest send or ring error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The endpoint the sender is told to use.
    pub endpoint: String,
    /// Its generation (one per `switch_endpoint`).
    pub generation: u64,
    /// Workers abandoned and replaced so far.
    pub worker_restarts: u64,
}

/// A snapshot of every counter: the ring's and the sender's.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SenderStats {
    /// The ring's counters (the accounting identity).
    pub ring: RingStats,
    /// Batches accepted by an endpoint.
    pub batches_sent: u64,
    /// Records accepted by an endpoint (re-sends included).
    pub records_sent: u64,
    /// Sends retried after a failure.
    pub retries: u64,
    /// Sends that failed (any reason).
    pub send_failures: u64,
    /// Sends refused as non-retryable.
    pub permanent_failures: u64,
    /// Sends cancelled (by a switch or shutdown).
    pub cancelled_sends: u64,
    /// Calls to `switch_endpoint`.
    pub switches: u64,
    /// Workers abandoned and replaced.
    pub worker_restarts: u64,
    /// Abandoned workers whose send has not returned yet: a transport that
    /// ignores its deadline and cancellation keeps each one's thread (the
    /// worker is replaced all the same, I7). Anything but 0 for long means
    /// such a transport, leaking a thread per `abandon_after`.
    pub abandoned_workers: u64,
    /// Stalls detected.
    pub stalls: u64,
    /// Gap notices sent to receivers.
    pub gap_notices: u64,
    /// Stall notices not handed to `on_stall` because 16 events were
    /// already waiting for a callback that is slow or blocked (loss ranges
    /// are never dropped: they wait, merged, for the next call).
    pub callbacks_dropped: u64,
    /// Records the ring evicted while their batch was in flight, which the
    /// receiver then accepted: in the ring's `overwritten` (evicted before
    /// their ack), yet delivered. `overwritten` less this is what receivers
    /// really miss to overwriting.
    pub overwritten_after_delivery: u64,
    /// Time since the last acknowledgement (`None`: none yet).
    pub since_last_ack: Option<Duration>,
    /// The current endpoint.
    pub endpoint: String,
    /// Its generation.
    pub generation: u64,
    /// The health state when the snapshot was taken.
    pub health: HealthState,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl SenderStats {
    /// Renders the stats in the Prometheus text exposition format (0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in self.ring_metrics().into_iter().chain(self.sender_metrics()) {
            let _ = writeln!(out, "# HELP ringship_{name} {help}");
            let _ = writeln!(out, "# TYPE ringship_{name} {kind}");
            let _ = writeln!(out, "ringship_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP ringship_seconds_since_last_ack Seconds since an endpoint last acknowledged a batch."
        );
        let _ = writeln!(out, "# TYPE ringship_seconds_since_last_ack gauge");
        match self.since_last_ack {
            Some(d) => {
                let _ = writeln!(out, "ringship_seconds_since_last_ack {:.3}", d.as_secs_f64());
            }
            None => {
                let _ = writeln!(out, "ringship_seconds_since_last_ack NaN");
            }
        }
        let _ = writeln!(out, "# HELP ringship_endpoint_info The endpoint the sender uses.");
        let _ = writeln!(out, "# TYPE ringship_endpoint_info gauge");
        let _ = writeln!(
            out,
            "ringship_endpoint_info{{endpoint=\"{}\",generation=\"{}\"}} 1",
            escape_label(&self.endpoint),
            self.generation
        );
        out
    }

    /// The ring's counters and gauges: (name, type, help, value).
    fn ring_metrics(&self) -> Vec<Metric> {
        let r = &self.ring;
        vec![
            ("records_appended_total", "counter", "Records offered to append.", r.appended),
            ("records_acked_total", "counter", "Records acknowledged by an endpoint.", r.acked),
            ("records_pending", "gauge", "Records in the ring not yet acknowledged.", r.pending),
            ("records_overwritten_total", "counter", "Records evicted before they were acknowledged.", r.overwritten),
            (
                "bytes_overwritten_total",
                "counter",
                "Ring bytes of records evicted unacknowledged.",
                r.overwritten_bytes,
            ),
            ("records_rejected_total", "counter", "Records refused at append.", r.rejected),
            ("records_corrupted_total", "counter", "Records found damaged on disk.", r.corrupted),
            ("records_lost_unsynced_total", "counter", "Records lost to power loss before sync.", r.lost_unsynced),
            ("records_refused_total", "counter", "Records an endpoint took but refused.", r.refused),
            (
                "seqs_skipped_total",
                "counter",
                "Seqs passed over after unclean shutdowns because they may have been handed out.",
                r.seqs_skipped,
            ),
            (
                "unreadable_bytes_total",
                "counter",
                "Bytes of the ring's files that could not be read since open (a failing disk).",
                r.unreadable_bytes,
            ),
            ("last_seq", "gauge", "Last sequence number assigned.", r.last_seq),
            ("durable_seq", "gauge", "Every record up to this seq is on stable storage.", r.durable_seq),
            ("ack_seq", "gauge", "Delivery cursor.", r.ack_seq),
            ("ring_used_bytes", "gauge", "Ring bytes in use.", r.used_bytes),
            ("ring_capacity_bytes", "gauge", "Ring capacity in bytes.", r.capacity),
        ]
    }

    /// The sender's counters and gauges: (name, type, help, value).
    fn sender_metrics(&self) -> Vec<Metric> {
        vec![
            ("batches_sent_total", "counter", "Batches accepted by an endpoint.", self.batches_sent),
            ("records_sent_total", "counter", "Records accepted by an endpoint, re-sends included.", self.records_sent),
            ("send_retries_total", "counter", "Sends retried after a failure.", self.retries),
            ("send_failures_total", "counter", "Sends that failed.", self.send_failures),
            ("send_permanent_failures_total", "counter", "Sends refused as non-retryable.", self.permanent_failures),
            ("sends_cancelled_total", "counter", "Sends cancelled by a switch or shutdown.", self.cancelled_sends),
            ("endpoint_switches_total", "counter", "Endpoint switches.", self.switches),
            ("worker_restarts_total", "counter", "Stuck workers abandoned and replaced.", self.worker_restarts),
            (
                "abandoned_workers",
                "gauge",
                "Abandoned workers whose send has not returned (threads a transport ignoring its deadline keeps).",
                self.abandoned_workers,
            ),
            ("stalls_total", "counter", "Stalls detected.", self.stalls),
            ("gap_notices_total", "counter", "Gap notices sent.", self.gap_notices),
            (
                "records_overwritten_after_delivery_total",
                "counter",
                "Records evicted while their batch was in flight and then accepted by the receiver.",
                self.overwritten_after_delivery,
            ),
            (
                "callbacks_dropped_total",
                "counter",
                "Stall notices dropped while the callbacks were busy.",
                self.callbacks_dropped,
            ),
            ("stalled", "gauge", "1 while the sender is stalled.", u64::from(self.health == HealthState::Stalled)),
        ]
    }
}

/// One metric: name (after `ringship_`), type, help, value.
type Metric = (&'static str, &'static str, &'static str, u64);

/// What [`Shipper::shutdown`](crate::Shipper::shutdown) achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Everything pending was delivered before the deadline.
    pub drained: bool,
    /// Records acknowledged during the shutdown.
    pub delivered: u64,
    /// Records left pending in the ring (kept on disk for the next start).
    pub left_pending: u64,
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// The final counters.
    pub stats: SenderStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_well_formed() {
        let s = SenderStats {
            ring: RingStats { appended: 10, acked: 7, pending: 3, ..RingStats::default() },
            batches_sent: 2,
            records_sent: 7,
            retries: 0,
            send_failures: 0,
            permanent_failures: 0,
            cancelled_sends: 0,
            switches: 1,
            worker_restarts: 0,
            abandoned_workers: 0,
            stalls: 0,
            gap_notices: 0,
            callbacks_dropped: 0,
            overwritten_after_delivery: 0,
            since_last_ack: Some(Duration::from_millis(1500)),
            endpoint: "http://a\"b".into(),
            generation: 2,
            health: HealthState::Healthy,
        };
        let text = s.to_prometheus();
        assert!(text.contains("ringship_records_appended_total 10\n"));
        assert!(text.contains("ringship_records_pending 3\n"));
        assert!(text.contains("ringship_seconds_since_last_ack 1.500\n"));
        assert!(text.contains("ringship_endpoint_info{endpoint=\"http://a\\\"b\",generation=\"2\"} 1\n"));
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(line.starts_with("# HELP ringship_") || line.starts_with("# TYPE ringship_"), "{line}");
            } else {
                let (name, value) = line.rsplit_once(' ').unwrap();
                assert!(name.starts_with("ringship_"), "{line}");
                assert!(value == "NaN" || value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
