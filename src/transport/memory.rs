//! An in-memory transport: for tests, examples and benchmarks.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Batch, BatchRecord, Endpoint, GapNotice, SendContext, SendError, Transport};

/// What one endpoint of a [`MemoryReceiver`] received.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Received {
    /// Records in arrival order (duplicates included), if payloads are kept.
    pub records: Vec<BatchRecord>,
    /// Gap notices in arrival order.
    pub gaps: Vec<GapNotice>,
    /// Batches accepted.
    pub batches: u64,
    /// Records accepted (duplicates included).
    pub record_count: u64,
}

/// The receiving side of [`MemoryTransport`]: collects what each endpoint
/// address was sent. Clones share the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryReceiver {
    inner: Arc<parking_lot::Mutex<HashMap<String, Received>>>,
    count_only: bool,
}

impl MemoryReceiver {
    /// A receiver that keeps every record.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver that only counts records and batches (and keeps gap
    /// notices): memory stays flat for benchmarks.
    pub fn counting() -> Self {
        MemoryReceiver { count_only: true, ..Self::default() }
    }

    /// A transport that delivers into this receiver.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport { receiver: self.clone() }
    }

    /// A copy of what `address` received.
    pub fn received(&self, address: &str) -> Received {
        self.inner.lock().get(address).cloned().unwrap_or_default()
    }

    /// Records received across all endpoints (duplicates included).
    pub fn total_records(&self) -> u64 {
        self.inner.lock().values().map(|r| r.record_count).sum()
    }

    fn accept(&self, endpoint: &Endpoint, batch: &Batch) {
        let mut all = self.inner.lock();
        let r = all.entry(endpoint.address.clone()).or_default();
        r.batches += 1;
        r.record_count += batch.records.len() as u64;
        if let Some(g) = batch.gap {
            r.gaps.push(g);
        }
        if !self.count_only {
            r.records.extend(batch.records.iter().cloned());
        }
    }
}

/// Delivers batches into a [`MemoryReceiver`], instantly and always
/// successfully.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    receiver: MemoryReceiver,
}

impl Transport for MemoryTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        self.receiver.accept(endpoint, batch);
        Ok(())
    }
}
