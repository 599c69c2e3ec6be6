//! Remote media: reference images and videos given as http(s) URLs, fetched when
//! `[remote_media] enabled = true` (otherwise a URL is a 400 naming its field, see
//! [`super::reference`]).
//!
//! The fetch is guarded against server-side request forgery:
//! - every host name is resolved by [`GuardedResolver`], which refuses the whole name when any
//!   of its addresses is loopback, private, link-local (cloud metadata `169.254.169.254`
//!   included), shared, multicast, reserved or documentation space, IPv4 and IPv6 (mapped,
//!   compatible, NAT64 and 6to4 forms judged by the IPv4 address inside), see [`forbidden`]; the
//!   connection then goes to the addresses that were checked (no second lookup to rebind);
//! - IP-literal hosts (which skip resolution) are judged by [`forbidden`] before the first
//!   request and before every redirect;
//! - at most `max_redirects` (≤ 3) redirects, each to http(s) and checked again as above;
//! - no proxy from the environment (it would resolve names for us, unchecked);
//! - `connect_timeout_s` and a whole-fetch `timeout_s` (a slow body is cut off);
//! - the body is read chunk by chunk and refused once it passes `max_bytes`;
//! - the answer must be 2xx with an `image/*` or `video/*` content type (`video/*` for video
//!   fields).
//!
//! Hosts in `allow_hosts` (exact name or IP literal) skip the address check, nothing else.
//! The fetched file replaces the URL in the body as a `data:` URL, so admission then reads it
//! like an inline reference.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use super::body::Fields;
use super::error::ApiError;

/// `[remote_media]` of serve.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteMediaConfig {
    /// Fetch http(s) reference URLs (default false: a URL is a 400 naming its field).
    pub enabled: bool,
    /// Hosts fetched even when they resolve to loopback or private addresses (exact host names
    /// or IP literals, case-insensitive).
    pub allow_hosts: Vec<String>,
    /// Largest file fetched, bytes [default: `[limits] max_upload_bytes`].
    pub max_bytes: Option<usize>,
    /// Seconds to connect.
    pub connect_timeout_s: f64,
    /// Seconds the whole fetch (connect, redirects, body) may take.
    pub timeout_s: f64,
    /// Redirects followed (at most 3).
    pub max_redirects: usize,
}

impl Default for RemoteMediaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow_hosts: Vec::new(),
            max_bytes: None,
            connect_timeout_s: 5.0,
            timeout_s: 30.0,
            max_redirects: 3,
        }
    }
}

/// Why `ip` may not be fetched (unless its host is allow-listed); `None`: a global address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "'this network' (0.0.0.0/8)",
        [127, ..] => "loopback (127.0.0.0/8)",
        [10, ..] => "private (10.0.0.0/8)",
        [172, b, ..] if (16..=31).contains(&b) => "private (172.16.0.0/12)",
        [192, 168, ..] => "private (192.168.0.0/16)",
        [169, 254, 169, 254] => "cloud metadata (169.254.169.254)",
        [169, 254, ..] => "link-local (169.254.0.0/16)",
        [100, b, ..] if b & 0xc0 == 64 => "shared address space (100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, 18 | 19, ..] => "benchmarking (198.18.0.0/15)",
        [a, ..] if (224..240).contains(&a) => "multicast (224.0.0.0/4)",
        [a, ..] if a >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d reaches a.b.c.d.
        return forbidden_v4(mapped);
    }
    Some(match s {
        _ if ip.is_unspecified() => "unspecified (::)",
        _ if ip.is_loopback() => "loopback (::1)",
        // ::a.b.c.d (deprecated IPv4-compatible).
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible IPv6 (::/96)",
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return forbidden_v4(v4(hi, lo)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x2002, hi, lo, ..] => return forbidden_v4(v4(hi, lo)),
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x100, 0, 0, 0, ..] => "discard (100::/64)",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique local, private (fc00::/7)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// A refusal of the guard, found again in reqwest's error chain (by type, or by its
/// [`REFUSED`] prefix where a layer re-wraps it).
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
struct Refused(String);

const REFUSED: &str = "refused: ";

fn is_allowed(allow: &[String], host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    allow
        .iter()
        .any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host))
}

/// A literal IP host that may not be fetched, as a refusal message.
fn refuse_literal(allow: &[String], url: &reqwest::Url) -> Option<String> {
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    let why = forbidden(ip)?;
    let host = url.host_str().unwrap_or_default();
    (!is_allowed(allow, host)).then(|| {
        format!("{ip}, a {why} address; add '{host}' to [remote_media] allow_hosts to fetch it")
    })
}

/// Resolves host names and refuses those with a forbidden address (unless allow-listed).
struct GuardedResolver {
    allow: Arc<Vec<String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allowed = is_allowed(&self.allow, &host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allowed
                && let Some((ip, why)) = addrs
                    .iter()
                    .find_map(|a| forbidden(a.ip()).map(|w| (a.ip(), w)))
            {
                return Err(Box::new(Refused(format!(
                    "'{host}' resolves to {ip}, a {why} address; add '{host}' to \
                     [remote_media] allow_hosts to fetch it"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guarded fetcher.
pub struct RemoteMedia {
    client: reqwest::Client,
    max_bytes: usize,
    timeout_s: f64,
    allow: Arc<Vec<String>>,
}

/// Reference fields whose value may be a URL (or an object holding one).
const URL_FIELDS: &[&str] = &[
    "input_reference",
    "image_reference",
    "video_reference",
    "start_image",
    "end_image",
    "reference_url",
    "video",
];

/// Keys of a reference object that hold its URL.
const URL_KEYS: &[&str] = &["image_url", "video_url", "url"];

fn is_http(s: &str) -> bool {
    let lower = s.trim().get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

impl RemoteMedia {
    /// The fetcher when `cfg.enabled`; `max_upload_bytes` caps the size unless `max_bytes` is set.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        cfg: &RemoteMediaConfig,
        max_upload_bytes: usize,
    ) -> Result<Option<Arc<Self>>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let allow = Arc::new(cfg.allow_hosts.clone());
        let max_redirects = cfg.max_redirects.min(3);
        let policy_allow = allow.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let n = max_redirects;
                return attempt.error(Refused(format!("more than {n} redirects")));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                let msg = format!("a redirect to '{}', not http(s)", attempt.url());
                return attempt.error(Refused(msg));
            }
            match refuse_literal(&policy_allow, attempt.url()) {
                Some(why) => attempt.error(Refused(format!("a redirect to {why}"))),
                None => attempt.follow(),
            }
        });
        let clamp = |s: f64| {
            Duration::from_secs_f64(if s.is_finite() {
                s.clamp(0.05, 3600.0)
            } else {
                30.0
            })
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .dns_resolver(Arc::new(GuardedResolver {
                allow: allow.clone(),
            }))
            .connect_timeout(clamp(cfg.connect_timeout_s))
            .timeout(clamp(cfg.timeout_s))
            .user_agent("omni-remote-media")
            .build()
            .map_err(|e| format!("[remote_media]: building the HTTP client: {e}"))?;
        Ok(Some(Arc::new(Self {
            client,
            max_bytes: cfg.max_bytes.unwrap_or(max_upload_bytes),
            timeout_s: cfg.timeout_s,
            allow,
        })))
    }

    /// Fetch `url` for field `param`: its content type and bytes.
    ///
    /// # Errors
    /// 400 naming `param`: refused by the guard, too many redirects, a non-2xx answer, a
    /// content type that is not `image/*` / `video/*` (`video/*` when `video_only`), a body over
    /// `max_bytes`, a timeout.
    pub async fn fetch(
        &self,
        param: &str,
        url: &str,
        video_only: bool,
    ) -> Result<(String, Vec<u8>), ApiError> {
        let bad = |m: String| ApiError::invalid(param, format!("`{param}`: fetching {url}: {m}"));
        let u = reqwest::Url::parse(url.trim()).map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(bad("only http(s) URLs with a host are fetched".into()));
        }
        if let Some(why) = refuse_literal(&self.allow, &u) {
            return Err(bad(format!("{REFUSED}{why}")));
        }
        let mut resp = self
            .client
            .get(u)
            .send()
            .await
            .map_err(|e| bad(why(&e, self.timeout_s)))?;
        if !resp.status().is_success() {
            return Err(bad(format!("the server answered {}", resp.status())));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let ok = ct.starts_with("video/") || (!video_only && ct.starts_with("image/"));
        if !ok {
            let want = match video_only {
                true => "video/*",
                false => "image/* or video/*",
            };
            return Err(bad(format!("content type '{ct}' is not {want}")));
        }
        let max = self.max_bytes;
        let too_big = || bad(format!("the file is over this server's {max}-byte limit"));
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| bad(why(&e, self.timeout_s)))?
        {
            if bytes.len() + chunk.len() > max {
                return Err(too_big());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((ct, bytes))
    }

    /// Replace every http(s) reference URL of `fields` (top-level strings, and `image_url`,
    /// `video_url`, `url` of reference objects or their JSON text) by a `data:` URL of the
    /// fetched file.
    ///
    /// # Errors
    /// As [`RemoteMedia::fetch`].
    pub async fn inline(&self, fields: &mut Fields) -> Result<(), ApiError> {
        for &field in URL_FIELDS {
            let Some(v) = fields.map.get_mut(field) else {
                continue;
            };
            if let Value::String(s) = v
                && (s.trim_start().starts_with('{') || s.trim_start().starts_with('['))
                && let Ok(parsed @ (Value::Object(_) | Value::Array(_))) =
                    serde_json::from_str::<Value>(s)
            {
                *v = parsed;
            }
            let video_field = matches!(field, "video_reference" | "video");
            // `image_reference` may list [first, last] (FastVideo).
            let items: Vec<&mut Value> = match v {
                Value::Array(items) => items.iter_mut().collect(),
                v => vec![v],
            };
            for item in items {
                let Some((slot, video_only)) = url_slot(item, video_field) else {
                    continue;
                };
                let url = slot.as_str().unwrap_or_default().to_string();
                let (ct, bytes) = self.fetch(field, &url, video_only).await?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                *slot = Value::String(format!("data:{ct};base64,{b64}"));
            }
        }
        Ok(())
    }
}

/// The http(s) URL string inside a reference value `v` (the value itself, or the `image_url`,
/// `video_url`, `url` of an object, or their `url`), and whether only a video may come back.
fn url_slot(v: &mut Value, video_field: bool) -> Option<(&mut Value, bool)> {
    match v {
        Value::String(s) if is_http(s) => Some((v, video_field)),
        Value::Object(o) => {
            let key = URL_KEYS.iter().find(|k| {
                o.get(**k).is_some_and(|u| {
                    u.as_str().is_some_and(is_http)
                        || u.get("url").and_then(Value::as_str).is_some_and(is_http)
                })
            })?;
            let only = video_field || *key == "video_url";
            let slot = o.get_mut(*key).expect("found above");
            let slot = match slot {
                Value::Object(inner) => inner.get_mut("url").expect("checked"),
                s => s,
            };
            Some((slot, only))
        }
        _ => None,
    }
}

/// A fetch error in words: the guard's refusal when it is one.
fn why(e: &reqwest::Error, timeout_s: f64) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return r.to_string();
        }
        let text = s.to_string();
        if text.starts_with(REFUSED) {
            return text;
        }
        src = s.source();
    }
    if e.is_timeout() {
        return format!("timed out after {timeout_s} s");
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Only the decision is tested: no packet goes to any of these addresses.
    #[test]
    fn the_guard_refuses_every_non_global_range() {
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001::1",
            "2001:db8::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(forbidden(ip(a)).is_some(), "{a} should be refused");
        }
        assert_eq!(
            forbidden(ip("169.254.169.254")),
            Some("cloud metadata (169.254.169.254)")
        );
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.255.255",
            "192.167.1.1",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(forbidden(ip(a)), None, "{a} is global");
        }
    }

    #[test]
    fn literal_hosts_are_judged_unless_allow_listed() {
        let allow = vec!["127.0.0.1".to_string(), "[::1]".to_string()];
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(refuse_literal(&allow, &u("http://127.0.0.1:8/x")).is_none());
        assert!(refuse_literal(&allow, &u("http://[::1]:8/x")).is_none());
        assert!(refuse_literal(&allow, &u("http://127.0.0.2/x")).is_some());
        assert!(refuse_literal(&allow, &u("http://[::ffff:7f00:2]/x")).is_some());
        assert!(refuse_literal(&allow, &u("http://169.254.169.254/latest")).is_some());
        // Decimal and short forms are normalised by the URL parser before the check.
        assert!(refuse_literal(&[], &u("http://2130706433/")).is_some());
        assert!(refuse_literal(&[], &u("http://0x7f.1/")).is_some());
        assert!(refuse_literal(&[], &u("http://8.8.8.8/")).is_none());
        assert!(refuse_literal(&[], &u("http://example.com/")).is_none());
    }
}
