//! The sender thread: batches every ~250 ms or 64 KiB, a heartbeat at least every 2 s,
//! acks drop frames, a 422 resends from the expected seq, errors back off and resend,
//! and the ack's command is obeyed at once.
//!
//! Only an ack that verifies (signed by the coordinator key for this run and claim
//! key, acking no seq beyond what was sent) moves the acked mark; a 422 only ever
//! moves the resend point back. Anything else is a protocol error: retried with
//! backoff, and after [`MAX_BAD_ACKS`] in a row the run ends as an infrastructure
//! error, never as a success.
use kiln_protocol::{BATCH_INTERVAL_MS, BATCH_MAX_BYTES, Batch, Command, HEARTBEAT_MS, PublicKey};
use std::time::{Duration, Instant};

use super::Reporter;
use crate::client::{AckCheck, Backoff, Client, Posted};

/// Answers in a row that fail the ack checks before the agent gives up.
pub const MAX_BAD_ACKS: u32 = 5;

impl Reporter {
    pub(super) fn send_loop(&self, client: &Client, coordinator: PublicKey) {
        let mut backoff = Backoff::default();
        let mut bad_acks = 0u32;
        let mut last_send = Instant::now() - Duration::from_millis(HEARTBEAT_MS);
        loop {
            let mut g = self.lock();
            // Wait for a reason to send: frames and 250 ms, 64 KiB, 2 s, or closing.
            loop {
                let unsent = g.next_send <= g.spool.last_seq();
                let due = last_send
                    + Duration::from_millis(if unsent {
                        BATCH_INTERVAL_MS
                    } else {
                        HEARTBEAT_MS
                    });
                let now = Instant::now();
                if g.closing || g.stopped().is_some() {
                    return;
                }
                if now >= due || g.unsent_bytes >= BATCH_MAX_BYTES {
                    break;
                }
                g = self
                    .wake
                    .wait_timeout(g, due - now)
                    .expect("reporter lock poisoned")
                    .0;
            }
            let from = g.next_send;
            let frames = match Self::take_batch(&mut g, from) {
                Ok(f) => f,
                Err(e) => {
                    log::error!("reading the spool: {e}");
                    g.broken = Some(format!("spool unreadable: {e}"));
                    self.wake.notify_all();
                    return;
                }
            };
            g.unsent_bytes = 0;
            let upto = frames.last().map(|f| f.seq).unwrap_or(from - 1);
            g.sent = g.sent.max(upto);
            let check = AckCheck {
                run: self.run,
                coordinator,
                claim: self.key.public(),
                sent: g.sent,
            };
            let more = upto < g.spool.last_seq();
            if !frames.is_empty()
                && let Err(e) = g.spool.sync()
            {
                log::warn!("spool sync: {e}");
            }
            drop(g);
            let sealed = Batch {
                run: self.run,
                frames,
            }
            .seal(&self.key);
            last_send = Instant::now();
            let mut result = client.post_batch(&sealed, &check);
            let mut g = self.lock();
            if let Posted::ResendFrom(n) = result
                && n > g.acked + 1
            {
                // Unsigned: a 422 may move the resend point back, never the acked mark.
                result = Posted::BadAck(format!(
                    "422 claims seqs up to {} are stored, but only {} are acked",
                    n - 1,
                    g.acked
                ));
            }
            if matches!(result, Posted::BadAck(_)) {
                bad_acks += 1;
            } else {
                bad_acks = 0;
            }
            match result {
                Posted::Acked(ack) => {
                    backoff.reset();
                    let upto_acked = ack.upto.min(g.spool.last_seq());
                    if upto_acked > g.acked {
                        g.acked = upto_acked;
                        if let Err(e) = g.spool.store_acked(upto_acked) {
                            log::warn!("storing the acked mark: {e}");
                        }
                    }
                    while g.queue.front().is_some_and(|f| f.seq <= upto_acked) {
                        g.queue.pop_front();
                    }
                    // Stop-and-wait: anything of the batch not acked is sent again.
                    g.next_send = g.acked + 1;
                    // The batch was full and more wait: send again without the pause.
                    if more {
                        g.unsent_bytes = g.unsent_bytes.max(BATCH_MAX_BYTES);
                    }
                    self.wake.notify_all();
                    drop(g);
                    self.obey(ack.command, ack.upto);
                }
                Posted::ResendFrom(n) => {
                    let n = n.max(1);
                    log::info!("coordinator expects seq {n}: resending from there");
                    g.next_send = n;
                    g.unsent_bytes = BATCH_MAX_BYTES;
                }
                Posted::BadAck(why) if bad_acks >= MAX_BAD_ACKS => {
                    let why = format!("protocol error: {why} ({MAX_BAD_ACKS} answers in a row)");
                    log::error!("{why}");
                    g.broken = Some(why.clone());
                    self.wake.notify_all();
                    drop(g);
                    self.control.abort(&why);
                    return;
                }
                Posted::BadAck(why) | Posted::Retry(why) => {
                    let delay = backoff.next_delay();
                    log::warn!("sending batch: {why} (retrying in {}ms)", delay.as_millis());
                    g.next_send = g.acked + 1;
                    let until = Instant::now() + delay;
                    while !g.closing && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        g = self
                            .wake
                            .wait_timeout(g, left)
                            .expect("reporter lock poisoned")
                            .0;
                    }
                    // Send at once after the backoff.
                    last_send = Instant::now() - Duration::from_millis(HEARTBEAT_MS);
                }
                Posted::Refused(why) => {
                    // A refused claim is the run's one-line end (the runner says it);
                    // later refusals are news while stages run.
                    if g.acked >= g.claim_seq {
                        log::error!("coordinator refused our batch: {why}");
                    } else {
                        log::debug!("coordinator refused our claim: {why}");
                    }
                    g.refused = Some(format!("coordinator refused reports: {why}"));
                    self.wake.notify_all();
                    drop(g);
                    self.control
                        .abort(&format!("coordinator refused reports: {why}"));
                    return;
                }
            }
        }
    }

    fn obey(&self, command: Command, upto: u64) {
        match command {
            Command::Continue => {}
            Command::Abort { reason } => {
                if self.control.aborted().is_none() {
                    log::warn!("coordinator aborted the run: {reason}");
                }
                self.control.abort(&reason);
            }
            Command::Shutdown => {
                if !self.control.shutdown() {
                    log::info!("coordinator asked for shutdown after the run");
                }
                self.control.set_shutdown();
            }
            order
            @ (Command::RetryStage { .. } | Command::Release { .. } | Command::Approve(_)) => {
                if !self.control.offer_order(order.clone(), upto) {
                    log::debug!("order {order:?} ignored: the run is not waiting at a hold");
                }
            }
        }
    }
}
