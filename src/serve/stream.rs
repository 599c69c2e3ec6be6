//! Streamed video: the fragmented MP4 of a job, fragment by fragment as its chunks are decoded,
//! for `GET /v1/videos/{id}/content?stream=true` and `POST /v1/videos/sync` with `stream=true`.
//!
//! The worker writes every video job also through an
//! [`Fmp4Writer`](crate::media::fmp4_out::Fmp4Writer) into a [`LiveWriter`]: the init segment
//! and one `moof` + `mdat` per chunk land in the job's [`LiveStream`] in memory, and each
//! append wakes the readers. A reader replays what is there, then waits for the next fragment
//! until the stream ends; the response goes out with chunked transfer (no `Content-Length`), so
//! the first bytes leave after the first chunk, not after the last. A failed or cancelled job
//! ends the body with an error (the client sees a truncated chunked response, not a short
//! video that looks complete).
//!
//! Fragments stay in memory while the job runs; once it completes they are written to
//! `<id>.fmp4` and the memory is freed (readers already attached finish from memory), and later
//! readers get the file. A completed job without that file (made before this server version)
//! is answered with its fast-start MP4 instead.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::watch;

use super::jobs::{Jobs, Status};

/// How often a waiting reader checks that its job still exists (a job deleted while queued
/// never starts its stream).
const JOB_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The fragments of one job's fragmented MP4.
#[derive(Debug)]
pub struct LiveStream {
    inner: Mutex<Inner>,
    /// Bumped on every change; readers wait on it.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Init segment, then one `moof` + `mdat` per chunk (as written, possibly split).
    pieces: Vec<Bytes>,
    /// `Some(true)`: complete; `Some(false)`: the job failed or was cancelled.
    end: Option<bool>,
}

impl LiveStream {
    fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Appends bytes and wakes the readers.
    fn append(&self, bytes: &[u8]) {
        self.lock().pieces.push(Bytes::copy_from_slice(bytes));
        self.bump();
    }

    /// Ends the stream: `ok` for a complete video, else an error for the readers.
    pub fn end(&self, ok: bool) {
        self.lock().end.get_or_insert(ok);
        self.bump();
    }

    /// A stream that is already complete with `bytes` (a finished job's `<id>.fmp4`).
    pub fn completed(bytes: Vec<u8>) -> Arc<Self> {
        let s = Self::new();
        s.append(&bytes);
        s.end(true);
        Arc::new(s)
    }

    /// Everything written so far, in one buffer.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().pieces.concat()
    }

    /// Whether the stream ended, and how.
    pub fn ended(&self) -> Option<bool> {
        self.lock().end
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.lock().pieces.iter().map(Bytes::len).sum()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The worker's side: an [`io::Write`] into a [`LiveStream`] (never fails).
#[derive(Debug, Clone)]
pub struct LiveWriter(pub Arc<LiveStream>);

impl io::Write for LiveWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.0.append(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The live streams of the server's jobs, by job id.
#[derive(Debug, Default)]
pub struct LiveStreams {
    map: Mutex<HashMap<String, Arc<LiveStream>>>,
}

impl LiveStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveStream>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream of job `id`, created empty when missing (a reader may come before the worker
    /// starts the job; both then use the same stream).
    pub fn get_or_create(&self, id: &str) -> Arc<LiveStream> {
        self.lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(LiveStream::new()))
            .clone()
    }

    /// The stream of job `id`, if any.
    pub fn get(&self, id: &str) -> Option<Arc<LiveStream>> {
        self.lock().get(id).cloned()
    }

    /// Ends and forgets the stream of a job that is gone.
    pub fn remove(&self, id: &str) {
        if let Some(s) = self.lock().remove(id) {
            s.end(false);
        }
    }

    /// Ends and forgets the streams whose job no longer exists.
    pub fn prune(&self, jobs: &Jobs) {
        let gone: Vec<String> = self
            .lock()
            .keys()
            .filter(|id| jobs.get(id).is_none())
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }
}

/// The body type of a streamed response.
pub type StreamedBody = StreamBody<
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>,
>;

/// Something kept alive as long as the response body (e.g. the guard that removes a sync job
/// when its client goes away).
pub type Keep = Box<dyn Send + 'static>;

struct Reader {
    stream: Arc<LiveStream>,
    rx: watch::Receiver<u64>,
    /// Pieces already sent.
    next: usize,
    done: bool,
    jobs: Arc<Jobs>,
    id: String,
    _keep: Option<Keep>,
}

impl Reader {
    /// The next body frame: new bytes, the end (`None`), or an error for a failed job.
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        if self.done {
            return None;
        }
        loop {
            self.rx.borrow_and_update();
            let (data, end) = {
                let g = self.stream.lock();
                let data = (self.next < g.pieces.len()).then(|| {
                    let mut out = Vec::new();
                    for p in &g.pieces[self.next..] {
                        out.extend_from_slice(p);
                    }
                    self.next = g.pieces.len();
                    Bytes::from(out)
                });
                (data, g.end)
            };
            if let Some(data) = data {
                return Some(Ok(Frame::data(data)));
            }
            match end {
                Some(true) => {
                    self.done = true;
                    return None;
                }
                Some(false) => {
                    self.done = true;
                    return Some(Err(io::Error::other("the generation did not complete")));
                }
                None => {}
            }
            match tokio::time::timeout(JOB_CHECK_EVERY, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.done = true;
                    return Some(Err(io::Error::other("the stream was dropped")));
                }
                Err(_) => {
                    let alive = self
                        .jobs
                        .get(&self.id)
                        .is_some_and(|r| !matches!(r.status, Status::Failed));
                    if !alive {
                        self.stream.end(false);
                    }
                }
            }
        }
    }
}

/// A chunked body that replays `stream` and follows it to its end.
pub fn body(
    stream: Arc<LiveStream>,
    jobs: Arc<Jobs>,
    id: &str,
    keep: Option<Keep>,
) -> StreamedBody {
    let reader = Reader {
        rx: stream.changed.subscribe(),
        stream,
        next: 0,
        done: false,
        jobs,
        id: id.to_string(),
        _keep: keep,
    };
    let s = futures_util::stream::unfold(reader, |mut r| async move {
        r.next_frame().await.map(|f| (f, r))
    });
    StreamBody::new(Box::pin(s))
}
