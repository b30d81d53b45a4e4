//! How to reach a ZooKeeper ensemble and where the registry lives in it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold::formats::{self, RegistryKind};
use leasehold::{Backoff, Codec, NativeCodec, RegistryUrl, Result};

/// The root under which services live when the URL names none.
pub const DEFAULT_ROOT: &str = "/leasehold/services";

/// The session timeout of the watch session when none is given.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// How long connecting may take when no `connect_timeout` is given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The query parameters a `zk://` URL may carry.
const KNOWN_PARAMS: &[&str] = &["session_timeout", "connect_timeout", "user", "password", "format"];

/// A ZooKeeper digest identity (`user:password`).
///
/// With one, every node this client creates gets ACLs so that only the same identity can
/// change or delete it (everyone else may read). The password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    user: String,
    password: String,
}

impl Digest {
    /// The identity `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Digest {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The `user:password` bytes ZooKeeper's digest scheme takes.
    pub(crate) fn credentials(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Everything [`ZkRegistry`](crate::ZkRegistry) needs: the ensemble, the root path, the
/// watch session's timeout, the connect bound, the identity and the wire format.
///
/// Registrations do not use `session_timeout`: each TTL group gets its own session whose
/// timeout is the registration's TTL (as negotiated with the server, which clamps it to
/// its `minSessionTimeout..maxSessionTimeout`).
///
/// ```
/// use std::time::Duration;
/// use leasehold_zookeeper::ZkOptions;
/// let options = ZkOptions::new(["10.0.0.1:2181", "10.0.0.2:2181"])
///     .root("/leasehold")
///     .session_timeout(Duration::from_secs(10))
///     .digest("svc", "secret");
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct ZkOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) root: String,
    pub(crate) session_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) digest: Option<Digest>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) backoff: Backoff,
}

impl fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkOptions")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("digest", &self.digest)
            .field("codec", &self.codec.name())
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl ZkOptions {
    /// Options for the ensemble at `endpoints` (`host:port` each), with the native format
    /// under [`DEFAULT_ROOT`], no identity, and the default timeouts.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ZkOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            root: DEFAULT_ROOT.to_owned(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            digest: None,
            codec: Arc::new(NativeCodec),
            backoff: Backoff::default(),
        }
    }

    /// Reads `zk://[user:password@]h1:p1,h2:p2[/root][?session_timeout=6s&connect_timeout=5s&format=native&user=u&password=p]`.
    /// `format` is any of [`leasehold::formats`] that ZooKeeper carries (`native`,
    /// `go-kit`, `curator`), read with [`formats::layout_from_url`] as every backend does.
    /// Unknown parameters, malformed durations and unknown formats are refused with an
    /// error naming them.
    pub fn from_url(url: &RegistryUrl) -> Result<Self> {
        url.expect_server("zk", KNOWN_PARAMS)?;
        let (codec, root) = formats::layout_from_url(url, RegistryKind::ZooKeeper, DEFAULT_ROOT)?;
        let mut options = ZkOptions::new(url.endpoints.iter().cloned())
            .root(&root)
            .codec(codec);
        if let Some(timeout) = url.duration_param("session_timeout")? {
            options = options.session_timeout(timeout);
        }
        if let Some(timeout) = url.duration_param("connect_timeout")? {
            options = options.connect_timeout(timeout);
        }
        if let Some((user, password)) = url.credentials()? {
            options = options.digest(user, password);
        }
        Ok(options)
    }

    /// The path under which services live (`{root}/{service}/...`); `/` puts services
    /// at the top of the tree.
    pub fn root(mut self, root: &str) -> Self {
        let root = root.trim_matches('/');
        self.root = if root.is_empty() {
            String::new()
        } else {
            format!("/{root}")
        };
        self
    }

    /// The session timeout of the session that watches and lists.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long establishing a session may take before the ensemble counts as unreachable.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates every session as the digest identity `user:password`, and protects
    /// the nodes it creates with ACLs.
    pub fn digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some(Digest::new(user, password));
        self
    }

    /// The wire format of node names and values.
    pub fn codec(mut self, codec: Arc<dyn Codec>) -> Self {
        self.codec = codec;
        self
    }

    /// How recovery retries are spaced: re-registering after a lost session, and watching
    /// again after the watch session ended.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The ensemble, as shown in errors and logs.
    pub(crate) fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<ZkOptions> {
        ZkOptions::from_url(&url.parse()?)
    }

    #[test]
    fn reads_every_part_of_a_url() {
        let options =
            parse("zk://u:pw@h1:2181,h2:2181/leasehold/?session_timeout=8s&connect_timeout=300ms").unwrap();
        assert_eq!(options.endpoints, ["h1:2181", "h2:2181"]);
        assert_eq!(options.root, "/leasehold");
        assert_eq!(options.session_timeout, Duration::from_secs(8));
        assert_eq!(options.connect_timeout, Duration::from_millis(300));
        assert_eq!(options.digest, Some(Digest::new("u", "pw")));
        assert_eq!(parse("zk://h:1").unwrap().root, DEFAULT_ROOT);
        let curator = parse("zk://h:1/services?format=curator").unwrap();
        assert_eq!(
            (curator.codec.name(), curator.root.as_str()),
            ("curator", "/services")
        );
        assert_eq!(parse("zk://h:1?format=go-kit").unwrap().codec.name(), "go-kit");
        assert_eq!(ZkOptions::new(["h:1"]).root("/").root, "");
        assert_eq!(ZkOptions::new(["h:1"]).root("a/b/").root, "/a/b");
        let params = parse("zk://h:1/r?user=a&password=b").unwrap();
        assert_eq!(params.digest.unwrap().credentials(), b"a:b");
    }

    #[test]
    fn bad_urls_name_the_problem() {
        let cases = [
            ("etcd://h:1", "the scheme must be zk://"),
            ("zk://h/x", "not host:port"),
            ("zk://h:1?sesion_timeout=1s", "sesion_timeout"),
            ("zk://h:1?session_timeout=soon", "session_timeout=\"soon\""),
            ("zk://h:1?connect_timeout=0s", "connect_timeout"),
            ("zk://h:1?format=gokit", "unknown format \"gokit\""),
            ("zk://h:1?format=go-zero", "not available on ZooKeeper"),
            ("zk://h:1?user=a", "user \"a\" given without a password"),
        ];
        for (url, expected) in cases {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let options = parse("zk://u:hunter2@h:1").unwrap();
        assert!(!format!("{options:?}").contains("hunter2"));
        let err = parse("zk://u:hunter2@h:1?bad=1").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse("zk://h:1?user=u&password=hunter2&bad=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
