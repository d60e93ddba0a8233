//! The endpoint switch protocol's shared state: which endpoint, which
//! generation, and the token of the send in flight (`sender.endpoint`,
//! level 40). Its own type so the loom models check this very code.

use std::sync::Arc;

use crate::sync::{LEVEL_SENDER_ENDPOINT, Mutex};
use crate::transport::{CancelToken, Endpoint};

struct Slot {
    generation: u64,
    endpoint: Arc<Endpoint>,
    /// (generation, worker id, token) of the send in flight.
    inflight: Option<(u64, u64, CancelToken)>,
}

/// Where to send, and the send in flight.
pub(crate) struct Switchboard {
    slot: Mutex<Slot>,
}

impl Switchboard {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Switchboard {
            slot: Mutex::new(
                LEVEL_SENDER_ENDPOINT,
                "sender.endpoint",
                Slot { generation: 1, endpoint: Arc::new(endpoint), inflight: None },
            ),
        }
    }

    /// Stores `endpoint` as generation + 1 and cancels a send in flight to
    /// an older generation; returns the generation and whether it changed.
    /// An endpoint equal to the current one (address and headers) changes
    /// nothing: configuration re-applied in a loop never disturbs a send.
    /// Never waits on anything but this lock, held for a few instructions
    /// and one comparison.
    pub(crate) fn switch(&self, endpoint: Endpoint) -> (u64, bool) {
        let mut slot = self.slot.lock();
        if *slot.endpoint == endpoint {
            return (slot.generation, false);
        }
        slot.generation += 1;
        slot.endpoint = Arc::new(endpoint);
        if slot.inflight.as_ref().is_some_and(|(g, _, _)| *g < slot.generation) {
            if let Some((_, _, token)) = slot.inflight.take() {
                token.cancel();
            }
        }
        (slot.generation, true)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.slot.lock().generation
    }

    pub(crate) fn current(&self) -> (u64, Arc<Endpoint>) {
        let slot = self.slot.lock();
        (slot.generation, Arc::clone(&slot.endpoint))
    }

    /// Registers a send by worker `worker_id`: the endpoint to use, its
    /// generation, and the token a later switch will fire. Reading the
    /// endpoint and registering the token happen under one lock, so a
    /// switch either precedes the send (which then uses the new endpoint)
    /// or cancels it.
    ///
    /// A worker already replaced (a send by a newer worker id is registered)
    /// gets a cancelled token and registers nothing: its late call must not
    /// hide the newer worker's send from switches and the supervisor.
    pub(crate) fn begin_send(&self, worker_id: u64) -> (u64, Arc<Endpoint>, CancelToken) {
        let token = CancelToken::new();
        let mut slot = self.slot.lock();
        if slot.inflight.as_ref().is_some_and(|(_, e, _)| *e > worker_id) {
            token.cancel();
        } else {
            slot.inflight = Some((slot.generation, worker_id, token.clone()));
        }
        (slot.generation, Arc::clone(&slot.endpoint), token)
    }

    /// The send by worker `worker_id` is over.
    pub(crate) fn end_send(&self, worker_id: u64) {
        let mut slot = self.slot.lock();
        if slot.inflight.as_ref().is_some_and(|(_, e, _)| *e == worker_id) {
            slot.inflight = None;
        }
    }

    /// Cancels the send in flight, whichever worker runs it.
    pub(crate) fn cancel_inflight(&self) {
        if let Some((_, _, token)) = self.slot.lock().inflight.take() {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced worker's late `begin_send` (worker id 1) after its
    /// replacement's (worker id 2): the newer send stays the one a switch
    /// cancels, and the stale worker's `end_send` does not unregister it.
    #[test]
    fn a_stale_workers_send_never_hides_a_newer_one() {
        let board = Switchboard::new(Endpoint::new("a"));
        let (_, _, newer) = board.begin_send(2);
        let (_, _, stale) = board.begin_send(1);
        assert!(stale.is_cancelled(), "a replaced worker's send is cancelled at once");
        board.end_send(1);
        board.switch(Endpoint::new("b"));
        assert!(newer.is_cancelled(), "the switch cancels the newer worker's send");
    }
}
