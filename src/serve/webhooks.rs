//! Signed webhooks: `video.completed`, `video.failed` and `video.cancelled` events, POSTed to the
//! job's `webhook_url` (per request, host allow-listed) or `[webhooks] url`.
//!
//! - **Event shape** (OpenAI's webhook events, e.g. openai-python 3.x
//!   `types/webhooks/batch_completed_webhook_event.py`):
//!   `{"id":"evt_…","object":"event","created_at":<unix s>,"type":"video.completed","data":{"id":"video_…"}}`.
//! - **Signature** (Standard Webhooks, as openai-python `lib/_webhooks.py`
//!   `webhook_signature_matches` checks it): headers `webhook-id` (the event id, the same on
//!   every attempt, so a receiver can drop duplicates), `webhook-timestamp` (unix seconds of the
//!   attempt) and `webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`,
//!   where `key` is the base64 after `whsec_` of `[webhooks] secret`.
//! - **Delivery**: at least once. Each event is first written to `<storage>/webhooks/<id>.json`
//!   (temporary file, fsync, rename), before the job's terminal record is stored (a crash in
//!   between runs the job again and sends a second event rather than none); then one task POSTs
//!   it; a 2xx answer removes the file, anything
//!   else (status, refused connection, timeout) schedules a retry after `initial_backoff_s ·
//!   2^(attempt−1)` (at most `max_backoff_s`) until the event is `max_age_s` old, when it is
//!   dropped with a warning. The outbox is read again at start, so a restart drops nothing.
//!   Redirects are not followed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::ApiError;
use super::jobs::{JobKind, JobRecord, Status, now};

/// `[webhooks]` of serve.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where every job's events go unless its request names a `webhook_url`.
    pub url: Option<String>,
    /// `whsec_` + base64 of the signing key (Standard Webhooks / OpenAI format). Required for
    /// any webhook.
    pub secret: Option<String>,
    /// Hosts a request's `webhook_url` may name (exact host names or IP literals,
    /// case-insensitive); empty: requests may not name one.
    pub allow_hosts: Vec<String>,
    /// Seconds to wait before the first retry; doubles each attempt.
    pub initial_backoff_s: f64,
    /// The longest wait between two attempts, seconds.
    pub max_backoff_s: f64,
    /// An event not delivered this many seconds after it was made is dropped (logged).
    pub max_age_s: u64,
    /// Seconds one delivery attempt may take (connect, send, answer).
    pub timeout_s: f64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            allow_hosts: Vec::new(),
            initial_backoff_s: 5.0,
            max_backoff_s: 600.0,
            max_age_s: 24 * 3600,
            timeout_s: 10.0,
        }
    }
}

impl WebhooksConfig {
    /// The signing key: the base64 after `whsec_`, decoded.
    ///
    /// # Errors
    /// A readable message when a URL is configured without a secret, or the secret is not
    /// `whsec_<base64>`.
    pub fn key(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(secret) = &self.secret else {
            return match (&self.url, self.allow_hosts.is_empty()) {
                (None, true) => Ok(None),
                _ => Err("[webhooks] needs `secret = \"whsec_<base64>\"` to sign events".into()),
            };
        };
        let b64 = secret
            .strip_prefix("whsec_")
            .ok_or("[webhooks] secret must start with `whsec_` (then base64)")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                format!("[webhooks] secret: the part after `whsec_` is not base64: {e}")
            })?;
        if key.is_empty() {
            return Err("[webhooks] secret is empty".into());
        }
        if let Some(url) = &self.url {
            http_url(url).map_err(|m| format!("[webhooks] url: {m}"))?;
        }
        Ok(Some(key))
    }
}

/// `url` parsed, if it is an absolute http(s) URL with a host.
fn http_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match (u.scheme(), u.host_str()) {
        ("http" | "https", Some(_)) => Ok(u),
        _ => Err(format!("'{url}' is not an http(s) URL with a host")),
    }
}

/// `webhook-signature` of one attempt: `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)).
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// One event waiting in the outbox (`<storage>/webhooks/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    id: String,
    url: String,
    /// The JSON body, exactly as signed and sent.
    body: String,
    created_at: u64,
    attempts: u32,
    /// Unix milliseconds of the next attempt.
    next_at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The outbox and its delivery task.
pub struct Webhooks {
    cfg: WebhooksConfig,
    key: Vec<u8>,
    dir: PathBuf,
    wake: tokio::sync::Notify,
}

impl Webhooks {
    /// The outbox under `storage` when `cfg` has a secret; `None` when webhooks are off.
    ///
    /// # Errors
    /// A readable message for a bad `[webhooks]` section or an outbox folder that cannot be made.
    pub fn open(cfg: &WebhooksConfig, storage: &Path) -> Result<Option<Arc<Self>>, String> {
        let Some(key) = cfg.key()? else {
            return Ok(None);
        };
        let dir = storage.join("webhooks");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Half-written events of a run that died while storing them (never sent).
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Some(Arc::new(Self {
            cfg: cfg.clone(),
            key,
            dir,
            wake: tokio::sync::Notify::new(),
        })))
    }

    /// The target of a new job: the request's `webhook_url` (its host must be in
    /// `allow_hosts`), else `[webhooks] url`.
    ///
    /// # Errors
    /// 400 naming `webhook_url`: not an http(s) URL, a host not allow-listed, or webhooks off.
    pub fn target(
        this: Option<&Self>,
        requested: Option<&serde_json::Value>,
    ) -> Result<Option<String>, ApiError> {
        let requested = match requested {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(s.trim().to_string()),
            Some(_) => return Err(ApiError::invalid("webhook_url", "must be a string URL")),
        };
        let Some(url) = requested else {
            return Ok(this.and_then(|w| w.cfg.url.clone()));
        };
        let Some(w) = this else {
            return Err(ApiError::invalid(
                "webhook_url",
                "`webhook_url`: this server sends no webhooks (its serve.toml has no [webhooks] secret)",
            ));
        };
        let u = http_url(&url).map_err(|m| ApiError::invalid("webhook_url", m))?;
        let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
        if !w
            .cfg
            .allow_hosts
            .iter()
            .any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host))
        {
            return Err(ApiError::invalid(
                "webhook_url",
                format!(
                    "`webhook_url`: host '{host}' is not in this server's [webhooks] allow_hosts"
                ),
            ));
        }
        Ok(Some(u.to_string()))
    }

    /// Queue the event `kind` (`video.completed`, …) of `rec` when it has a target: written
    /// to the outbox before this returns, delivered by [`Webhooks::run`]. Image jobs and
    /// hidden (`/v1/videos/sync`) jobs send none.
    pub fn emit(&self, rec: &JobRecord, kind: &str) {
        let Some(url) = rec.webhook_url.clone() else {
            return;
        };
        if rec.hidden || rec.kind != JobKind::Video {
            return;
        }
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let created_at = now();
        let body = serde_json::json!({
            "id": id,
            "object": "event",
            "created_at": created_at,
            "type": kind,
            "data": {"id": rec.id},
        })
        .to_string();
        let p = Pending {
            id,
            url,
            body,
            created_at,
            attempts: 0,
            next_at_ms: now_ms(),
        };
        match self.store(&p) {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::error!("webhook outbox: storing {}: {e}", p.id),
        }
    }

    /// The event a terminal record sends.
    pub fn emit_terminal(&self, rec: &JobRecord) {
        match rec.status {
            Status::Completed => self.emit(rec, "video.completed"),
            Status::Failed => self.emit(rec, "video.failed"),
            _ => {}
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn store(&self, p: &Pending) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", p.id));
        let text = serde_json::to_vec(p).map_err(std::io::Error::other)?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(&p.id))
    }

    fn load(&self) -> Vec<Pending> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("evt_") || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
            {
                Some(p) => out.push(p),
                None => tracing::warn!("webhook outbox: unreadable {name}; left alone"),
            }
        }
        out.sort_by_key(|p| (p.next_at_ms, p.created_at));
        out
    }

    /// Deliver the outbox forever: due events in order, then sleep until the next one is due
    /// or a new one arrives.
    pub async fn run(self: Arc<Self>) {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs_f64(
                self.cfg.timeout_s.clamp(0.1, 600.0),
            ))
            .user_agent("omni-webhooks")
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("webhooks: building the HTTP client: {e}");
                return;
            }
        };
        loop {
            let me = self.clone();
            let pending = tokio::task::spawn_blocking(move || me.load())
                .await
                .unwrap_or_default();
            let mut next_due: Option<u64> = None;
            for mut p in pending {
                if p.next_at_ms > now_ms() {
                    next_due = Some(next_due.map_or(p.next_at_ms, |n| n.min(p.next_at_ms)));
                    continue;
                }
                let outcome = self.attempt(&client, &p).await;
                p.attempts += 1;
                match outcome {
                    Ok(()) => {
                        tracing::info!("webhook {} delivered to {}", p.id, p.url);
                        let _ = std::fs::remove_file(self.path(&p.id));
                    }
                    Err(why) if now().saturating_sub(p.created_at) >= self.cfg.max_age_s => {
                        tracing::warn!(
                            "webhook {} to {}: giving up after {} attempt(s) over {} s: {why}",
                            p.id,
                            p.url,
                            p.attempts,
                            self.cfg.max_age_s
                        );
                        let _ = std::fs::remove_file(self.path(&p.id));
                    }
                    Err(why) => {
                        let wait = backoff(&self.cfg, p.attempts);
                        tracing::info!(
                            "webhook {} to {}: attempt {} failed ({why}); retrying in {wait:.2} s",
                            p.id,
                            p.url,
                            p.attempts
                        );
                        p.next_at_ms = now_ms() + (wait * 1000.0) as u64;
                        next_due = Some(next_due.map_or(p.next_at_ms, |n| n.min(p.next_at_ms)));
                        if let Err(e) = self.store(&p) {
                            tracing::error!("webhook outbox: storing {}: {e}", p.id);
                        }
                    }
                }
            }
            let sleep = next_due.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis(t.saturating_sub(now_ms()))
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One POST; `Err` says why it did not count as delivered.
    async fn attempt(&self, client: &reqwest::Client, p: &Pending) -> Result<(), String> {
        let ts = now();
        let r = client
            .post(&p.url)
            .header("content-type", "application/json")
            .header("webhook-id", &p.id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                signature(&self.key, &p.id, ts, &p.body),
            )
            .body(p.body.clone())
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        match r.status().is_success() {
            true => Ok(()),
            false => Err(format!("answered {}", r.status())),
        }
    }
}

/// Seconds before attempt `attempts + 1`: `initial · 2^(attempts−1)`, at most `max_backoff_s`
/// (both at least 0.1 s, so a zero or NaN setting cannot spin; at most a day).
fn backoff(cfg: &WebhooksConfig, attempts: u32) -> f64 {
    let exp = 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
    let sane = |s: f64| {
        if s.is_nan() {
            0.1
        } else {
            s.clamp(0.1, 86400.0)
        }
    };
    (sane(cfg.initial_backoff_s) * exp).min(sane(cfg.max_backoff_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected value was computed independently with Python's `hmac` + `hashlib.sha256` +
    /// `base64` (the construction of openai-python `lib/_webhooks.py`):
    /// `base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    /// b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}", hashlib.sha256).digest())`.
    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let cfg = WebhooksConfig {
            initial_backoff_s: 1.0,
            max_backoff_s: 5.0,
            ..Default::default()
        };
        let waits: Vec<f64> = (1..=5).map(|a| backoff(&cfg, a)).collect();
        assert_eq!(waits, vec![1.0, 2.0, 4.0, 5.0, 5.0]);
        let zero = WebhooksConfig {
            initial_backoff_s: 0.0,
            max_backoff_s: f64::NAN,
            ..Default::default()
        };
        assert_eq!(backoff(&zero, 1), 0.1);
    }

    #[test]
    fn secrets_and_targets_are_checked() {
        let off = WebhooksConfig::default();
        assert_eq!(off.key(), Ok(None));
        let no_secret = WebhooksConfig {
            url: Some("http://x/".into()),
            ..Default::default()
        };
        assert!(no_secret.key().is_err());
        for bad in ["abc", "whsec_***", "whsec_"] {
            let c = WebhooksConfig {
                secret: Some(bad.into()),
                ..Default::default()
            };
            assert!(c.key().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = WebhooksConfig {
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            allow_hosts: vec!["hooks.example".into(), "127.0.0.1".into()],
            ..Default::default()
        };
        let w = Webhooks::open(&cfg, dir.path()).unwrap().unwrap();
        let t = |v: serde_json::Value| Webhooks::target(Some(&w), Some(&v));
        assert_eq!(
            t(serde_json::json!("https://HOOKS.example/a")).unwrap(),
            Some("https://hooks.example/a".into())
        );
        assert!(
            t(serde_json::json!("http://127.0.0.1:9/x"))
                .unwrap()
                .is_some()
        );
        for bad in [
            serde_json::json!("http://evil.example/"),
            serde_json::json!("ftp://hooks.example/"),
            serde_json::json!("hooks.example"),
            serde_json::json!(3),
        ] {
            let e = t(bad.clone()).unwrap_err();
            assert_eq!(e.body()["error"]["param"], "webhook_url", "{bad}");
        }
        let e = Webhooks::target(None, Some(&serde_json::json!("http://127.0.0.1/"))).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "webhook_url");
        assert_eq!(Webhooks::target(Some(&w), None).unwrap(), None);
    }
}
