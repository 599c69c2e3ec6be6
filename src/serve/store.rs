//! `[store]` and `--role`: where job records live, and which part of the server a process runs.
//!
//! ```toml
//! role = "api"                          # all (default) | api | worker
//! [store]
//! url = "postgres://omni@db.internal/omni"   # default: file://<storage folder>
//! lease_s = 30                          # a running job's lease, seconds
//! poll_ms = 1000                        # lease renewal / cancellation check / idle poll, ms
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which part of `omni serve` this process runs (`--role`, `role = …`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// HTTP API and workers in one process (the default).
    #[default]
    All,
    /// HTTP API only: no model is loaded (request defaults come from the checkpoint's config
    /// files); jobs go to the shared store for `worker` processes.
    Api,
    /// Runs jobs from the shared store; serves only `/health`, `/readyz` and `/metrics`.
    Worker,
}

impl Role {
    /// The name as written in flags and config.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    /// Whether this process runs workers (loads the model).
    pub fn runs_jobs(self) -> bool {
        self != Role::Api
    }

    /// Whether this process answers the API routes (not only the probes and `/metrics`).
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }
}

/// `[store]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `file:///path` (JSON records under `<path>/jobs`; default: the storage folder) or
    /// `postgres://user:password@host:port/database` (the shared store).
    pub url: Option<String>,
    /// Seconds a worker holds a claimed job without renewing it [default 30]; a job whose
    /// worker died runs again this long after its last renewal.
    pub lease_s: Option<f64>,
    /// Milliseconds between lease renewals, which are also the cancellation checks of running
    /// jobs, and between idle workers' polls besides `LISTEN/NOTIFY` [default 1000].
    pub poll_ms: Option<u64>,
}

/// Where job records live.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    /// One JSON file per job under `<path>/jobs` (one process).
    File(PathBuf),
    /// PostgreSQL, shared by every process on it (the URL as given, password included).
    Postgres(String),
}

/// The resolved `[store]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    /// See [`StoreSection::lease_s`].
    pub lease: Duration,
    /// See [`StoreSection::poll_ms`].
    pub poll: Duration,
}

impl StoreSection {
    /// Resolve against the storage folder (the file store's default place); `role` api and
    /// worker need a shared store.
    ///
    /// # Errors
    /// A one-line message naming the key.
    pub fn resolve(self, storage: &std::path::Path, role: Role) -> Result<StoreConfig, String> {
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => StoreUrl::File(storage.to_path_buf()),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                StoreUrl::Postgres(u.to_string())
            }
            Some(u) => match url::Url::parse(u) {
                Ok(p) if p.scheme() == "file" => {
                    StoreUrl::File(p.to_file_path().map_err(|_| {
                        format!("[store] url = \"{u}\": a file:// URL needs an absolute path")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "[store] url = \"{}\": give file:///path or postgres://…",
                        super::postgres::redact(u)
                    ));
                }
            },
        };
        if role != Role::All && !matches!(url, StoreUrl::Postgres(_)) {
            return Err(format!(
                "--role {} needs a store shared by processes: set [store] url = \"postgres://…\" in the config (the file store belongs to one process)",
                role.name()
            ));
        }
        let lease_s = self.lease_s.unwrap_or(30.0);
        if !(lease_s.is_finite() && (0.5..=86400.0).contains(&lease_s)) {
            return Err(format!(
                "[store] lease_s = {lease_s}: give 0.5 to 86400 seconds"
            ));
        }
        let poll_ms = self.poll_ms.unwrap_or(1000);
        if !(10..=60_000).contains(&poll_ms) || poll_ms as f64 >= lease_s * 1000.0 {
            return Err(format!(
                "[store] poll_ms = {poll_ms}: give 10 to 60000 ms, less than lease_s"
            ));
        }
        Ok(StoreConfig {
            url,
            lease: Duration::from_secs_f64(lease_s),
            poll: Duration::from_millis(poll_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, role: Role) -> Result<StoreConfig, String> {
        let s: StoreSection = toml::from_str(text).unwrap();
        s.resolve(std::path::Path::new("/st"), role)
    }

    #[test]
    fn urls_roles_and_timings() {
        let d = resolve("", Role::All).unwrap();
        assert_eq!(d.url, StoreUrl::File("/st".into()));
        assert_eq!((d.lease.as_secs(), d.poll.as_millis()), (30, 1000));
        let f = resolve("url = \"file:///var/omni\"", Role::All).unwrap();
        assert_eq!(f.url, StoreUrl::File("/var/omni".into()));
        let pg = "url = \"postgres://u:pw@h/db\"\nlease_s = 3\npoll_ms = 200";
        let p = resolve(pg, Role::Worker).unwrap();
        assert_eq!(p.url, StoreUrl::Postgres("postgres://u:pw@h/db".into()));
        assert_eq!(p.poll, Duration::from_millis(200));
        let e = resolve("", Role::Api).unwrap_err();
        assert!(e.contains("--role api") && e.contains("postgres://"), "{e}");
        let e = resolve("url = \"mysql://u:pw@h/db\"", Role::All).unwrap_err();
        assert!(e.contains("[store] url") && !e.contains("pw"), "{e}");
        let e = resolve(
            "url = \"postgres://h/db\"\nlease_s = 1\npoll_ms = 1000",
            Role::All,
        );
        assert!(e.unwrap_err().contains("poll_ms"));
    }
}
