//! The decision log's sink: a bounded queue drained by a thread of its own,
//! so writing never holds up an answer. When the queue is full the line is
//! dropped and counted; a sink that fails is counted and reported on the
//! service log, once per run of failures.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
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

/// The writer thread: writes each line, flushes whenever the queue runs
/// empty, and stops when every sender is gone.
fn drain(lines: Receiver<Message>, mut sink: Box<dyn Write + Send>, metrics: &Metrics) {
    let mut failing = false;
    let mut buffered = false;
    loop {
        // Wait briefly for more before flushing, so a burst becomes one
        // write; an idle log is flushed within the wait.
        let message =
            match lines.recv_timeout(Duration::from_millis(if buffered { 1 } else { 1000 })) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    if buffered {
                        note(sink.flush(), &mut failing, metrics, None);
                        buffered = false;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = sink.flush();
                    return;
                }
            };
        match message {
            Message::Line(line) => {
                let written = serde_json::to_writer(&mut sink, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| sink.write_all(b"\n"));
                note(written, &mut failing, metrics, Some(LogResult::Written));
                buffered = true;
            }
            Message::Flush(done) => {
                note(sink.flush(), &mut failing, metrics, None);
                buffered = false;
                let _ = done.send(());
            }
        }
    }
}

/// Counts a write's result; the first failure of a run goes to the service
/// log, and so does the recovery.
fn note(result: std::io::Result<()>, failing: &mut bool, metrics: &Metrics, ok: Option<LogResult>) {
    match result {
        Ok(()) => {
            if let Some(ok) = ok {
                metrics.log_line(ok);
            }
            if *failing {
                *failing = false;
                tracing::warn!("decision log: writing again");
            }
        }
        Err(error) => {
            if ok.is_some() {
                metrics.log_line(LogResult::Failed);
            }
            if !*failing {
                *failing = true;
                tracing::error!(%error, "decision log: cannot write; lines are lost and counted until it recovers");
            }
        }
    }
}
