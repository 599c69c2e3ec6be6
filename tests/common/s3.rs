//! The S3-compatible server of the object-store tests (`[outputs] url = "s3://…"`): the one at
//! `OMNI_S3_ENDPOINT`, or a moto server (`moto[server]` from PyPI) started here and killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The S3 server a test talks to: its endpoint, and the moto process when the test started it.
pub struct S3Server {
    /// `http://host:port`, no trailing slash.
    pub endpoint: String,
    _moto: Option<Killed>,
}

/// The credentials the tests give `omni serve` (moto accepts any).
pub const ACCESS_KEY_ID: &str = "omni-test";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "omni-test-secret";

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OMNI_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

/// `OMNI_S3_ENDPOINT`, or a moto server started here; `None` (after printing why, naming `test`)
/// when there is neither and `OMNI_REQUIRE_S3` is unset.
pub fn s3_or_skip(test: &str) -> Option<S3Server> {
    if let Some(e) = std::env::var("OMNI_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    {
        return Some(S3Server {
            endpoint: e.trim_end_matches('/').to_string(),
            _moto: None,
        });
    }
    let Some(moto) = moto_binary() else {
        assert!(
            std::env::var_os("OMNI_REQUIRE_S3").is_none(),
            "OMNI_REQUIRE_S3 is set but there is no S3 server: set OMNI_S3_ENDPOINT or install \
             moto (python3 -m venv target/moto-venv && target/moto-venv/bin/pip install \
             'moto[server]==5.2.5')"
        );
        eprintln!(
            "SKIPPED {test}: no S3 server (set OMNI_S3_ENDPOINT, or install moto_server into \
             target/moto-venv; OMNI_REQUIRE_S3=1 makes this a failure)"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", moto.display()));
    let server = S3Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        _moto: Some(Killed(child)),
    };
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "moto_server never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(server)
}

impl S3Server {
    /// `host:port` of the endpoint.
    pub fn host(&self) -> &str {
        self.endpoint
            .strip_prefix("http://")
            .expect("an http endpoint")
    }

    /// `OMNI_S3_BUCKET`, or a new bucket `omni-test-<pid>-<tag>` made with an unsigned
    /// `PUT /<bucket>` (moto accepts it; for a server that does not, create the bucket first and
    /// set `OMNI_S3_BUCKET`).
    pub fn bucket(&self, tag: &str) -> String {
        if let Ok(b) = std::env::var("OMNI_S3_BUCKET") {
            return b;
        }
        let name = format!("omni-test-{}-{tag}", std::process::id());
        let (status, body) = super::http::http(self.host(), "PUT", &format!("/{name}"), &[], b"");
        assert_eq!(
            status,
            200,
            "creating bucket {name}: {}",
            String::from_utf8_lossy(&body)
        );
        name
    }

    /// The `[outputs]` section of a serve.toml publishing to `s3://bucket/prefix` here.
    pub fn outputs_section(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "[outputs]\nurl = \"s3://{bucket}/{prefix}\"\nendpoint = \"{}\"\nallow_http = true\n\
             access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\n\
             region = \"us-east-1\"\n",
            self.endpoint
        )
    }
}
