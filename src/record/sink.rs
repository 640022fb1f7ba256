//! The decision log's sink: a bounded queue drained by a thread of its own,
//! so writing never holds up an answer. When the queue is full the line is
//! dropped and counted; a sink that fails is counted and reported on the
//! service log, once per run of failures. The line is serialised on the
//! writer thread, never on the request path.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use crate::metrics::{LogResult, Metrics};

use super::line::Line;

/// What the writer thread is sent.
enum Message {
    Line(Line),
    /// Write everything queued before this, flush, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sending side of the decision log; cheap to share. A log built with
/// [`DecisionLog::off`] takes nothing and counts nothing.
#[derive(Clone)]
pub struct DecisionLog {
    queue: Option<SyncSender<Message>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("on", &self.queue.is_some())
            .finish()
    }
}

impl DecisionLog {
    /// No decision log.
    pub fn off(metrics: Arc<Metrics>) -> Self {
        Self {
            queue: None,
            metrics,
        }
    }

    /// Starts the writer thread over `sink`, with room for `capacity` lines
    /// in the queue (at least 1).
    pub fn start(
        sink: Box<dyn Write + Send>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (queue, lines) = std::sync::mpsc::sync_channel(capacity.max(1));
        let counted = metrics.clone();
        std::thread::Builder::new()
            .name("stepgate-decision-log".to_owned())
            .spawn(move || drain(lines, sink, &counted))?;
        Ok(Self {
            queue: Some(queue),
            metrics,
        })
    }

    /// Whether lines are written at all; when not, callers skip building
    /// them.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a line, or drops and counts it when the queue is full.
    /// Never blocks.
    pub fn write(&self, line: Line) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.log_line(LogResult::Dropped),
            // The writer thread is gone (it only stops when every sender
            // is): the line is lost like a dropped one.
            Err(TrySendError::Disconnected(_)) => self.metrics.log_line(LogResult::Dropped),
        }
    }

    /// Waits, up to `timeout`, until every line queued so far is written
    /// and flushed; false when the sink did not catch up in time. For
    /// shutdown and tests.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let (done, finished) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        // The flush request itself waits for room in the queue, up to the
        // deadline.
        let mut message = Message::Flush(done);
        loop {
            match queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        finished.recv_timeout(left).is_ok()
    }
}

/// How often the writer thread wakes to write what was queued. Senders
/// never wake it: a line costs the request path one enqueue and no system
/// call, and a burst becomes one write.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// A batch is written out once it holds this many bytes, even mid-drain.
const BATCH_BYTES: usize = 1 << 20;

/// The writer thread: every [`DRAIN_EVERY`], serialises everything queued
/// into one buffer, writes and flushes it, answers flush requests, and
/// stops when every sender is gone.
fn drain(lines: Receiver<Message>, mut sink: Box<dyn Write + Send>, metrics: &Metrics) {
    let mut failing = false;
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut count: u64 = 0;
    let mut flushes = Vec::new();
    loop {
        let mut disconnected = false;
        loop {
            match lines.try_recv() {
                Ok(Message::Line(line)) => {
                    // Serialising our own types into memory cannot fail.
                    if serde_json::to_writer(&mut batch, &line).is_ok() {
                        batch.push(b'\n');
                        count += 1;
                    }
                    if batch.len() >= BATCH_BYTES {
                        write_batch(&mut sink, &mut batch, &mut count, &mut failing, metrics);
                    }
                }
                Ok(Message::Flush(done)) => flushes.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            write_batch(&mut sink, &mut batch, &mut count, &mut failing, metrics);
        } else if !flushes.is_empty() {
            // Nothing new to write: a flush proves nothing about the sink.
            let _ = sink.flush();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if disconnected {
            return;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// Writes and flushes a batch of `count` lines, counting them written or
/// failed; the first failure of a run goes to the service log, and so
/// does the recovery.
fn write_batch(
    sink: &mut Box<dyn Write + Send>,
    batch: &mut Vec<u8>,
    count: &mut u64,
    failing: &mut bool,
    metrics: &Metrics,
) {
    let written = sink.write_all(batch).and_then(|()| sink.flush());
    let lines = std::mem::take(count);
    batch.clear();
    match written {
        Ok(()) => {
            metrics.log_lines_by(LogResult::Written, lines);
            if *failing {
                *failing = false;
                tracing::warn!("decision log: writing again");
            }
        }
        Err(error) => {
            metrics.log_lines_by(LogResult::Failed, lines);
            if !*failing {
                *failing = true;
                tracing::error!(%error, "decision log: cannot write; lines are lost and counted until it recovers");
            }
        }
    }
}
