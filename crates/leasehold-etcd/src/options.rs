//! How to reach an etcd cluster and lay out keys in it: [`EtcdOptions`], built in code or
//! from an `etcd://` [`RegistryUrl`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use leasehold::formats::{self, RegistryKind};
use leasehold::{Backoff, Codec, Error, NativeCodec, RegistryUrl, Result};

/// The root under which the native format keeps services: `{root}/{service}/{id}`.
pub const DEFAULT_ROOT: &str = "/leasehold/services";

/// The query parameters an `etcd://` URL may carry.
const KNOWN_PARAMS: &[&str] = &[
    "user",
    "password",
    "ca",
    "cert",
    "key",
    "connect_timeout",
    "request_timeout",
    "format",
    "max_request_bytes",
    "scheme",
];

/// The smallest request limit accepted: room for one key, its value and a transaction.
const MIN_REQUEST_BYTES: usize = 4096;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Everything [`EtcdRegistry`](crate::EtcdRegistry) needs to connect: endpoints,
/// credentials, TLS files, timeouts, key layout and format.
///
/// Defaults keep failures bounded: 5 s to connect, 5 s per request, and an HTTP/2 ping
/// every 6 s that must be answered within 2 s, so a connection to a frozen member is
/// dropped within about 8 s (etcd closes connections that ping more often than its
/// `--grpc-keepalive-min-time`, 5 s by default; watch and keepalive streams notice a
/// frozen member sooner, by their own answers).
/// Its `Debug` never shows the password.
///
/// ```
/// use std::time::Duration;
/// use leasehold_etcd::EtcdOptions;
/// let options = EtcdOptions::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .root("/prod/services")
///     .user("svc", "s3cret")
///     .connect_timeout(Duration::from_secs(2));
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) root: String,
    user: Option<(String, String)>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    keep_alive: (Duration, Duration),
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) backoff: Backoff,
    pub(crate) max_request_bytes: usize,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("ca", &self.ca)
            .field("identity", &self.identity)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("format", &self.codec.name())
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

impl EtcdOptions {
    /// Options for the cluster at `endpoints` (`host:port`), with every default.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            root: DEFAULT_ROOT.to_owned(),
            user: None,
            ca: None,
            identity: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive: (Duration::from_secs(6), Duration::from_secs(2)),
            codec: Arc::new(NativeCodec),
            backoff: Backoff::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Options from an `etcd://[user[:password]@]h1:p1[,h2:p2...][/root][?params]` URL.
    ///
    /// Parameters: `user`, `password` (also accepted from the URL's userinfo), `ca`,
    /// `cert`, `key` (PEM file paths; any of them turns TLS on), `connect_timeout` and
    /// `request_timeout` (such as `5s` or `500ms`), `max_request_bytes` (the cluster's
    /// `--max-request-bytes`, default 1.5 MiB, in bytes), `format` (any of
    /// [`leasehold::formats`] that etcd carries; native by default, and a format's own
    /// root when the URL has no path). Anything else is refused by name, so a typo is an
    /// error rather than silently ignored.
    pub fn from_url(url: &RegistryUrl) -> Result<Self> {
        url.expect_server("etcd", KNOWN_PARAMS)?;
        let fail = |reason: String| Error::invalid_url(url.to_string(), reason);
        let (codec, root) = formats::layout_from_url(url, RegistryKind::Etcd, DEFAULT_ROOT)?;
        let mut options = EtcdOptions::new(url.endpoints.iter().cloned())
            .root(root)
            .codec(codec);
        if let Some((user, password)) = url.credentials()? {
            options = options.user(user, password);
        }
        if let Some(ca) = url.param("ca") {
            options = options.ca(ca);
        }
        match (url.param("cert"), url.param("key")) {
            (Some(cert), Some(key)) => options = options.client_cert(cert, key),
            (None, None) => {}
            _ => return Err(fail("cert and key must be given together".into())),
        }
        if let Some(timeout) = url.duration_param("connect_timeout")? {
            options.connect_timeout = timeout;
        }
        if let Some(timeout) = url.duration_param("request_timeout")? {
            options.request_timeout = timeout;
        }
        if let Some(bytes) = url.param("max_request_bytes") {
            options.max_request_bytes = bytes
                .parse()
                .ok()
                .filter(|&b: &usize| b >= MIN_REQUEST_BYTES)
                .ok_or_else(|| {
                    fail(format!(
                        "max_request_bytes={bytes:?} is not a number of bytes of at least {MIN_REQUEST_BYTES}"
                    ))
                })?;
        }
        Ok(options)
    }

    /// The root under which services are kept (default [`DEFAULT_ROOT`]); a trailing `/`
    /// is ignored.
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into().trim_end_matches('/').to_owned();
        self
    }

    /// Authenticates as `name` with `password` (etcd's auth must be enabled).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Turns TLS on, trusting the CA certificate in the PEM file at `path`.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Turns TLS on and presents the client certificate and private key in these PEM
    /// files.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// How long to wait for a TCP (and TLS) connection to a member.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long any single request may take before it fails with
    /// [`Error::Timeout`]; also bounds how long a request waits for a reachable member.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: a ping every `interval`, and a connection that does not answer
    /// within `timeout` is dropped (so requests stop going to a frozen member). etcd
    /// closes connections that ping more often than its `--grpc-keepalive-min-time`.
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = (interval, timeout);
        self
    }

    /// The format keys and values are written and read in (default native).
    pub fn codec(mut self, codec: Arc<dyn Codec>) -> Self {
        self.codec = codec;
        self
    }

    /// The most bytes one request to the cluster may carry: its `--max-request-bytes`
    /// (default [`DEFAULT_MAX_REQUEST_BYTES`]). Batched writes are split to fit; one
    /// registration larger than this fails alone. At least 4 KiB.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes.max(MIN_REQUEST_BYTES);
        self
    }

    /// How recovery of lost leases is paced (never gives up).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The endpoints, joined as they appear in error messages.
    pub(crate) fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    /// etcd-client's options. Never logged: they hold the password.
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keep_alive.0, self.keep_alive.1)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((name, password)) = &self.user {
            // Tokens expire (5 min by default); a long-lived client must get new ones.
            options = options
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if self.ca.is_some() || self.identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("ca", ca)?));
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(read_pem("cert", cert)?, read_pem("key", key)?));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

fn read_pem(what: &str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid_url(
            format!("{what}={}", path.display()),
            format!("cannot read the {what} file: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<EtcdOptions> {
        EtcdOptions::from_url(&url.parse()?)
    }

    #[test]
    fn url_sets_every_option() {
        let options = parse("etcd://u:pw@h1:1,h2:2/root/?connect_timeout=250ms&request_timeout=3s").unwrap();
        assert_eq!(options.endpoints, ["h1:1", "h2:2"]);
        assert_eq!(options.root, "/root");
        assert_eq!(options.user, Some(("u".into(), "pw".into())));
        assert_eq!(options.connect_timeout, Duration::from_millis(250));
        assert_eq!(options.request_timeout, Duration::from_secs(3));
        let defaults = parse("etcd://h:1").unwrap();
        assert_eq!(defaults.root, DEFAULT_ROOT);
        assert_eq!(defaults.codec.name(), "native");
        assert_eq!(defaults.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        let small = parse("etcd://h:1?max_request_bytes=65536").unwrap();
        assert_eq!(small.max_request_bytes, 65536);
        let go_zero = parse("etcd://h:1?format=go-zero").unwrap();
        assert_eq!((go_zero.codec.name(), go_zero.root.as_str()), ("go-zero", ""));
        let params = parse("etcd://h:1?user=a&password=b").unwrap();
        assert_eq!(params.user, Some(("a".into(), "b".into())));
    }

    #[test]
    fn bad_urls_name_the_problem() {
        let cases = [
            ("zk://h:1", "the scheme must be etcd://"),
            ("etcd://h/x", "not host:port"),
            ("etcd://h:1?fromat=native", "fromat"),
            ("etcd://h:1?format=gokit", "unknown format \"gokit\""),
            ("etcd://h:1?format=curator", "not available on etcd"),
            ("etcd://h:1?connect_timeout=soon", "connect_timeout=\"soon\""),
            ("etcd://u@h:1", "without a password"),
            ("etcd://h:1?cert=a.pem", "together"),
            ("etcd://h:1?max_request_bytes=1MiB", "max_request_bytes=\"1MiB\""),
        ];
        for (url, expected) in cases {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn password_never_shows() {
        let options = parse("etcd://root:hunter2@h:1?ca=/nonexistent/ca.pem").unwrap();
        assert!(!format!("{options:?}").contains("hunter2"));
        let err = options.connect_options().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        for url in [
            "etcd://root:hunter2@h:1?fromat=x",
            "etcd://h:1?user=root&password=hunter2&fromat=x",
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let options = parse("etcd://h:1?user=root&password=hunter2").unwrap();
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
