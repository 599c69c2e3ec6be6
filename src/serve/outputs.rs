//! Where finished outputs live: `[outputs] url`.
//!
//! The worker always writes a job's files to its local staging folder (the `[storage]` folder:
//! `<storage>/<id>.mp4`, `.fmp4`, `.state`, `.thumbnail.webp`, `.spritesheet.jpg`, `.png`).
//! When the job completes, [`Outputs::publish_blocking`] moves them to the outputs backend:
//!
//! - a folder (`file:///path`, or no `[outputs]` at all: the storage folder itself, today's
//!   behaviour, where publishing is a no-op);
//! - an S3-compatible bucket (`s3://bucket/prefix`) through the `object_store` crate: each file
//!   is streamed from disk with [`object_store::buffered::BufWriter`] (one `PUT` below 8 MiB, a
//!   multipart upload of 8 MiB parts above, never the whole file in memory) to
//!   `<prefix>/<id><suffix>`, then the staging copy is removed.
//!
//! The HTTP side reads them back with [`Outputs::fetch`] (a `Range` request becomes a ranged
//! `GET` of the object), or answers a 302 to a presigned `GET` URL ([`Outputs::presigned`],
//! `[outputs] redirect = true`). [`Outputs::remove`] deletes a job's objects (DELETE, the TTL
//! sweep, a cancelled job). The live `stream=true` view of a running job stays in the memory
//! of the process that runs it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreScheme};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// Part size of multipart uploads (S3's minimum part is 5 MiB); smaller files go in one `PUT`.
pub const UPLOAD_PART_BYTES: usize = 8 << 20;

/// `[outputs]` of serve.toml. Every key is optional; credentials not given here come from the
/// standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`), as `object_store`'s `AmazonS3Builder::from_env` reads them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputsConfig {
    /// `file:///abs/path` or `s3://bucket[/prefix]` [default: the `[storage]` folder].
    pub url: Option<String>,
    /// S3 endpoint for S3-compatible servers (MinIO, moto, Ceph…), e.g. `http://127.0.0.1:9000`
    /// [default: env `AWS_ENDPOINT_URL`, else AWS].
    pub endpoint: Option<String>,
    /// S3 region [default: env `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`].
    pub region: Option<String>,
    /// Allow a plain-http endpoint [default: env `AWS_ALLOW_HTTP`, else false].
    pub allow_http: Option<bool>,
    /// Access key id [default: env `AWS_ACCESS_KEY_ID`, or the instance's role].
    pub access_key_id: Option<String>,
    /// Secret access key [default: env `AWS_SECRET_ACCESS_KEY`].
    pub secret_access_key: Option<String>,
    /// Answer content downloads with a 302 to a presigned URL instead of streaming the bytes
    /// through the server (`s3://` only) [default: false].
    pub redirect: bool,
    /// Lifetime of a presigned URL, seconds (1 to 604800, S3's limit) [default: 3600].
    pub presign_expiry_s: u64,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            allow_http: None,
            access_key_id: None,
            secret_access_key: None,
            redirect: false,
            presign_expiry_s: 3600,
        }
    }
}

/// One published file of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFile {
    /// The fast-start MP4 (`video/mp4`).
    Video,
    /// The fragmented MP4 finished streams read (`stream=true`).
    Fmp4,
    /// The middle frame (`image/webp`).
    Thumbnail,
    /// The preview grid (`image/jpeg`).
    Spritesheet,
    /// The frame of an image job (`image/png`).
    Image,
    /// The continuation state (safetensors).
    State,
    /// The input of an I2V / V2V job or continuation (the uploaded reference, or the state blob
    /// it continues), as the API node stored it at admission: published at once, so a worker on
    /// another machine can read it ([`Outputs::read_blocking`]).
    Input,
    /// The last image of a first-last-frame job (`end_image`), stored and published as
    /// [`OutputFile::Input`] is.
    LastInput,
}

impl OutputFile {
    /// Every kind, in the order they are removed.
    pub const ALL: [OutputFile; 8] = [
        OutputFile::Video,
        OutputFile::Fmp4,
        OutputFile::Thumbnail,
        OutputFile::Spritesheet,
        OutputFile::Image,
        OutputFile::State,
        OutputFile::Input,
        OutputFile::LastInput,
    ];

    /// The file name after the job id (the same in staging, in a folder and in a bucket).
    pub fn suffix(self) -> &'static str {
        match self {
            OutputFile::Video => ".mp4",
            OutputFile::Fmp4 => ".fmp4",
            OutputFile::Thumbnail => ".thumbnail.webp",
            OutputFile::Spritesheet => ".spritesheet.jpg",
            OutputFile::Image => ".png",
            OutputFile::State => ".state",
            OutputFile::Input => ".input",
            OutputFile::LastInput => ".last.input",
        }
    }

    /// `<id><suffix>`.
    pub fn name(self, id: &str) -> String {
        format!("{id}{}", self.suffix())
    }
}

/// Why a file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such file or object.
    #[error("not found")]
    NotFound,
    /// The `Range` cannot be satisfied; the file's length in bytes.
    #[error("range not satisfiable ({0} bytes)")]
    Unsatisfiable(u64),
    /// The backend failed (I/O, network, credentials).
    #[error("{0}")]
    Backend(String),
}

/// Bytes read back: the whole file, or the requested range of it.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    /// The file's full length in bytes.
    pub len: u64,
    /// The inclusive byte range `bytes` holds when a range was asked and satisfiable.
    pub range: Option<(u64, u64)>,
}

enum Backend {
    /// Files in a folder (`staging` itself by default).
    Folder(PathBuf),
    S3 {
        store: Arc<AmazonS3>,
        prefix: ObjectPath,
        redirect: bool,
        expiry: Duration,
    },
}

/// The outputs backend of a server (see the module docs).
pub struct Outputs {
    backend: Backend,
    /// Where the worker writes (the `[storage]` folder).
    staging: PathBuf,
    /// The runtime uploads and deletes run on when called from worker threads.
    runtime: Option<tokio::runtime::Handle>,
    /// What the logs and errors call it (the URL without credentials).
    pub describe: String,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("describe", &self.describe)
            .finish()
    }
}

fn backend_err(e: object_store::Error) -> FetchError {
    match e {
        object_store::Error::NotFound { .. } => FetchError::NotFound,
        e => FetchError::Backend(e.to_string()),
    }
}

impl Outputs {
    /// Today's behaviour: outputs stay where the worker wrote them, in `staging`.
    pub fn folder(staging: &Path) -> Self {
        Self {
            backend: Backend::Folder(staging.to_path_buf()),
            staging: staging.to_path_buf(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            describe: format!("file://{}", staging.display()),
        }
    }

    /// The backend `cfg` names, staging in `staging`. For `s3://` this must run inside a tokio
    /// runtime (uploads from the worker threads run on it); no request is sent yet.
    ///
    /// # Errors
    /// A one-line message naming the `[outputs]` key: an unknown scheme, a `file://` URL that
    /// is not a local absolute path, `redirect` without `s3://`, a bad `presign_expiry_s`, or what `object_store`
    /// rejects (missing bucket, malformed endpoint).
    pub fn open(cfg: &OutputsConfig, staging: &Path) -> Result<Self, String> {
        let Some(raw) = cfg.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            if cfg.redirect {
                return Err("[outputs] redirect = true needs url = \"s3://bucket/prefix\"".into());
            }
            return Ok(Self::folder(staging));
        };
        let url = url::Url::parse(raw)
            .map_err(|e| format!("[outputs] url = {raw:?}: not a URL ({e})"))?;
        match url.scheme() {
            "file" => {
                if cfg.redirect {
                    return Err(
                        "[outputs] redirect = true needs an s3:// url (a folder cannot sign URLs)"
                            .into(),
                    );
                }
                let dir = url
                    .to_file_path()
                    .map_err(|()| format!("[outputs] url = {raw:?}: not an absolute file path"))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("[outputs] url = {raw:?}: {e}"))?;
                Ok(Self {
                    describe: format!("file://{}", dir.display()),
                    backend: Backend::Folder(dir),
                    staging: staging.to_path_buf(),
                    runtime: tokio::runtime::Handle::try_current().ok(),
                })
            }
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| format!("[outputs] url = {raw:?}: no bucket"))?;
                if !(1..=604_800).contains(&cfg.presign_expiry_s) {
                    return Err(format!(
                        "[outputs] presign_expiry_s = {}: give 1 to 604800 seconds",
                        cfg.presign_expiry_s
                    ));
                }
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| "[outputs] s3:// needs the server's async runtime".to_string())?;
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(v) = &cfg.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &cfg.region {
                    b = b.with_region(v);
                }
                if let Some(v) = cfg.allow_http {
                    b = b.with_allow_http(v);
                }
                if let Some(v) = &cfg.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &cfg.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                let store = b
                    .build()
                    .map_err(|e| format!("[outputs] url = {raw:?}: {e}"))?;
                let prefix = ObjectPath::parse(url.path().trim_matches('/'))
                    .map_err(|e| format!("[outputs] url = {raw:?}: bad prefix ({e})"))?;
                Ok(Self {
                    describe: format!("s3://{bucket}/{prefix}"),
                    backend: Backend::S3 {
                        store: Arc::new(store),
                        prefix,
                        redirect: cfg.redirect,
                        expiry: Duration::from_secs(cfg.presign_expiry_s),
                    },
                    staging: staging.to_path_buf(),
                    runtime: Some(runtime),
                })
            }
            other => {
                // Schemes object_store knows but omni does not build (gs, az, http, memory).
                let known = ObjectStoreScheme::parse(&url).is_ok();
                Err(format!(
                    "[outputs] url = {raw:?}: the {other}:// scheme is not supported{}; use file:///path or s3://bucket/prefix",
                    if known { " by omni" } else { "" }
                ))
            }
        }
    }

    /// The folder outputs are read from, or `None` for an object store.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Folder(d) => Some(d),
            Backend::S3 { .. } => None,
        }
    }

    /// The object store and the key of `id`'s `file` (`None` for a folder): for tests and
    /// benchmarks that look into the bucket.
    pub fn object(&self, id: &str, file: OutputFile) -> Option<(Arc<dyn ObjectStore>, ObjectPath)> {
        match &self.backend {
            Backend::Folder(_) => None,
            Backend::S3 { store, prefix, .. } => Some((
                store.clone() as Arc<dyn ObjectStore>,
                prefix.child(file.name(id)),
            )),
        }
    }

    /// The staging file of `id`'s `file`.
    pub fn staging_path(&self, id: &str, file: OutputFile) -> PathBuf {
        self.staging.join(file.name(id))
    }

    /// Move `id`'s `file` from staging to the backend. Returns `false` when there is no staging
    /// file (nothing to publish). For a folder other than staging the file is renamed (copied
    /// across file systems); for S3 it is streamed up and the staging copy removed.
    ///
    /// # Errors
    /// The I/O or object-store error, as text.
    pub async fn publish(&self, id: &str, file: OutputFile) -> Result<bool, String> {
        let src = self.staging_path(id, file);
        if !tokio::fs::try_exists(&src).await.unwrap_or(false) {
            return Ok(false);
        }
        match &self.backend {
            Backend::Folder(dir) if *dir == self.staging => Ok(true),
            Backend::Folder(dir) => {
                let dst = dir.join(file.name(id));
                if tokio::fs::rename(&src, &dst).await.is_err() {
                    tokio::fs::copy(&src, &dst).await.map_err(|e| {
                        format!("copying {} to {}: {e}", src.display(), dst.display())
                    })?;
                    let _ = tokio::fs::remove_file(&src).await;
                }
                Ok(true)
            }
            Backend::S3 { store, prefix, .. } => {
                let key = prefix.child(file.name(id));
                let mut from = tokio::fs::File::open(&src)
                    .await
                    .map_err(|e| format!("{}: {e}", src.display()))?;
                let mut to = BufWriter::with_capacity(
                    store.clone() as Arc<dyn ObjectStore>,
                    key.clone(),
                    UPLOAD_PART_BYTES,
                );
                let copied = tokio::io::copy(&mut from, &mut to).await;
                let done = match copied {
                    Ok(_) => to.shutdown().await,
                    Err(e) => {
                        let _ = to.abort().await;
                        Err(e)
                    }
                };
                done.map_err(|e| format!("uploading {}: {e}", key))?;
                let _ = tokio::fs::remove_file(&src).await;
                Ok(true)
            }
        }
    }

    /// [`publish`](Self::publish) every one of `files` that exists, from a worker thread (not
    /// an async task): waits for the uploads on the server's runtime.
    ///
    /// # Errors
    /// The first failure, as text.
    pub fn publish_blocking(&self, id: &str, files: &[OutputFile]) -> Result<(), String> {
        let all = async {
            for f in files {
                self.publish(id, *f).await?;
            }
            Ok(())
        };
        match (&self.backend, &self.runtime) {
            (Backend::Folder(dir), _) if *dir == self.staging => Ok(()),
            (_, Some(rt)) => rt.block_on(all),
            (_, None) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(all),
        }
    }

    /// Read `id`'s `file`, or the part `range` picks once the length is known (`range` gets the
    /// length and answers as `routes::parse_range`: `None` = the whole file, `Some(Err)` =
    /// unsatisfiable). A folder reads the file; S3 sends a `HEAD` then a ranged `GET`.
    ///
    /// # Errors
    /// [`FetchError`].
    pub async fn fetch(
        &self,
        id: &str,
        file: OutputFile,
        range: impl FnOnce(u64) -> Option<Result<(u64, u64), ()>>,
    ) -> Result<Fetched, FetchError> {
        match &self.backend {
            Backend::Folder(dir) => {
                let bytes = tokio::fs::read(dir.join(file.name(id)))
                    .await
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => FetchError::NotFound,
                        _ => FetchError::Backend(e.to_string()),
                    })?;
                let bytes = Bytes::from(bytes);
                let len = bytes.len() as u64;
                match range(len) {
                    None => Ok(Fetched {
                        bytes,
                        len,
                        range: None,
                    }),
                    Some(Ok((a, b))) => Ok(Fetched {
                        bytes: bytes.slice(a as usize..=b as usize),
                        len,
                        range: Some((a, b)),
                    }),
                    Some(Err(())) => Err(FetchError::Unsatisfiable(len)),
                }
            }
            Backend::S3 { store, prefix, .. } => {
                let key = prefix.child(file.name(id));
                let len = store.head(&key).await.map_err(backend_err)?.size;
                match range(len) {
                    None => {
                        let bytes = store
                            .get(&key)
                            .await
                            .map_err(backend_err)?
                            .bytes()
                            .await
                            .map_err(backend_err)?;
                        Ok(Fetched {
                            bytes,
                            len,
                            range: None,
                        })
                    }
                    Some(Ok((a, b))) => {
                        let r: Range<u64> = a..b + 1;
                        let bytes = store.get_range(&key, r).await.map_err(backend_err)?;
                        Ok(Fetched {
                            bytes,
                            len,
                            range: Some((a, b)),
                        })
                    }
                    Some(Err(())) => Err(FetchError::Unsatisfiable(len)),
                }
            }
        }
    }

    /// The whole of `id`'s `file`.
    ///
    /// # Errors
    /// [`FetchError`].
    pub async fn read(&self, id: &str, file: OutputFile) -> Result<Bytes, FetchError> {
        Ok(self.fetch(id, file, |_| None).await?.bytes)
    }

    /// [`read`](Self::read) from synchronous code on the server's multi-threaded runtime (a
    /// folder reads the file directly; S3 blocks this worker thread in place).
    ///
    /// # Errors
    /// [`FetchError`].
    pub fn read_blocking(&self, id: &str, file: OutputFile) -> Result<Bytes, FetchError> {
        match &self.backend {
            Backend::Folder(dir) => std::fs::read(dir.join(file.name(id)))
                .map(Bytes::from)
                .map_err(|_| FetchError::NotFound),
            Backend::S3 { .. } => {
                let rt = self.runtime.as_ref().expect("s3 outputs hold the runtime");
                tokio::task::block_in_place(|| rt.block_on(self.read(id, file)))
            }
        }
    }

    /// With `[outputs] redirect = true`: a presigned `GET` URL of `id`'s `file`, valid for
    /// `presign_expiry_s` (no request is sent: the signature is computed locally). `None`
    /// when downloads go through the server.
    ///
    /// # Errors
    /// Signing failed (no credentials), as text.
    pub async fn presigned(&self, id: &str, file: OutputFile) -> Option<Result<String, String>> {
        match &self.backend {
            Backend::S3 {
                store,
                prefix,
                redirect: true,
                expiry,
            } => Some(
                store
                    .signed_url(hyper::Method::GET, &prefix.child(file.name(id)), *expiry)
                    .await
                    .map(|u| u.to_string())
                    .map_err(|e| e.to_string()),
            ),
            _ => None,
        }
    }

    /// Delete every published file of `id` (absent ones are fine).
    pub async fn delete(&self, id: &str) {
        match &self.backend {
            Backend::Folder(dir) => {
                for f in OutputFile::ALL {
                    let _ = tokio::fs::remove_file(dir.join(f.name(id))).await;
                }
            }
            Backend::S3 { store, prefix, .. } => {
                for f in OutputFile::ALL {
                    match store.delete(&prefix.child(f.name(id))).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => tracing::warn!("deleting {id}{}: {e}", f.suffix()),
                    }
                }
            }
        }
    }

    /// [`delete`](Self::delete) from synchronous code (the job table): a folder other than
    /// staging is cleaned at once; S3 deletes run as a task on the server's runtime, so they
    /// finish a few milliseconds after the caller returns.
    pub fn remove(self: &Arc<Self>, id: &str) {
        match &self.backend {
            Backend::Folder(dir) if *dir == self.staging => {}
            Backend::Folder(dir) => {
                for f in OutputFile::ALL {
                    let _ = std::fs::remove_file(dir.join(f.name(id)));
                }
            }
            Backend::S3 { .. } => {
                if let Some(rt) = &self.runtime {
                    let (me, id) = (self.clone(), id.to_string());
                    rt.spawn(async move { me.delete(&id).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> OutputsConfig {
        OutputsConfig {
            url: Some(url.into()),
            ..Default::default()
        }
    }

    #[test]
    fn urls_pick_the_backend_and_bad_ones_name_the_key() {
        let staging = tempfile::tempdir().unwrap();
        let o = Outputs::open(&OutputsConfig::default(), staging.path()).unwrap();
        assert_eq!(o.local_dir(), Some(staging.path()));
        let other = tempfile::tempdir().unwrap();
        let url = format!("file://{}", other.path().display());
        let o = Outputs::open(&cfg(&url), staging.path()).unwrap();
        assert_eq!(o.local_dir(), Some(other.path()));
        for (url, needle) in [
            ("gs://bucket/x", "gs:// scheme is not supported"),
            ("file://otherhost/videos", "not an absolute file path"),
            ("s3:///prefix-without-bucket", "no bucket"),
            ("not a url", "not a URL"),
        ] {
            let err = Outputs::open(&cfg(url), staging.path()).unwrap_err();
            assert!(err.starts_with("[outputs] url"), "{err}");
            assert!(err.contains(needle), "{url}: {err}");
        }
        let err = Outputs::open(
            &OutputsConfig {
                redirect: true,
                ..Default::default()
            },
            staging.path(),
        )
        .unwrap_err();
        assert!(err.contains("redirect"), "{err}");
        // s3:// outside a runtime: the uploads would have nowhere to run.
        let err = Outputs::open(&cfg("s3://b/p"), staging.path()).unwrap_err();
        assert!(err.contains("runtime"), "{err}");
    }

    #[test]
    fn a_folder_backend_moves_reads_ranges_and_deletes() {
        let staging = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let o = Arc::new(
            Outputs::open(
                &cfg(&format!("file://{}", dest.path().display())),
                staging.path(),
            )
            .unwrap(),
        );
        let id = "video_0123456789abcdef0123456789abcdef";
        std::fs::write(o.staging_path(id, OutputFile::Video), b"0123456789").unwrap();
        o.publish_blocking(id, &[OutputFile::Video, OutputFile::Thumbnail])
            .unwrap();
        assert!(!o.staging_path(id, OutputFile::Video).exists());
        assert!(dest.path().join(format!("{id}.mp4")).is_file());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let f = rt
            .block_on(o.fetch(id, OutputFile::Video, |len| Some(Ok((2, len - 4)))))
            .unwrap();
        assert_eq!(
            (&f.bytes[..], f.len, f.range),
            (&b"23456"[..], 10, Some((2, 6)))
        );
        let e = rt
            .block_on(o.fetch(id, OutputFile::Video, |len| {
                assert_eq!(len, 10);
                Some(Err(()))
            }))
            .unwrap_err();
        assert!(matches!(e, FetchError::Unsatisfiable(10)), "{e}");
        assert!(matches!(
            rt.block_on(o.read(id, OutputFile::Thumbnail)),
            Err(FetchError::NotFound)
        ));
        o.remove(id);
        assert!(!dest.path().join(format!("{id}.mp4")).exists());
    }
}
