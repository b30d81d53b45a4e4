//! Registry URLs: `scheme://[user[:password]@]host:port[,host:port...][/root][?key=value&...]`.
//!
//! One binary picks its backend at run time from a URL such as
//! `etcd://10.0.0.1:2379,10.0.0.2:2379/leasehold/services?format=native` or
//! `zk://127.0.0.1:2181/leasehold` or `memory://`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::{Error, Result};

/// A parsed registry URL. Its `Display` and `Debug` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryUrl {
    /// The scheme, lower-cased: `memory`, `etcd`, `zk`.
    pub scheme: String,
    /// The user name, if the URL has one.
    pub user: Option<String>,
    /// The password, if the URL has one.
    pub password: Option<String>,
    /// The `host:port` endpoints, in order (for `memory://name`, the name).
    pub endpoints: Vec<String>,
    /// The root path without a trailing `/`, or `None` when the URL has no path.
    pub root: Option<String>,
    /// The query parameters.
    pub params: BTreeMap<String, String>,
}

impl RegistryUrl {
    /// Parses `url`; the error says what is malformed.
    ///
    /// ```
    /// let url: leasehold::RegistryUrl = "etcd://u:secret@h1:2379,h2:2379/svc?format=go-zero".parse()?;
    /// assert_eq!(url.scheme, "etcd");
    /// assert_eq!(url.endpoints, ["h1:2379", "h2:2379"]);
    /// assert_eq!(url.root.as_deref(), Some("/svc"));
    /// assert_eq!(url.params["format"], "go-zero");
    /// assert_eq!(url.to_string(), "etcd://u:***@h1:2379,h2:2379/svc?format=go-zero");
    /// # Ok::<(), leasehold::Error>(())
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let fail = |reason: &str| Error::invalid_url(mask_password(url), reason);
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            fail("expected scheme://hosts/root, such as etcd://127.0.0.1:2379/leasehold/services")
        })?;
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
            return Err(fail("malformed scheme"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], Some(&rest[at..])),
            None => (rest, None),
        };
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        if path.is_some_and(|p| p.contains('@')) {
            return Err(fail(
                "an `@` after the first `/`: percent-encode a user or password that has `/` in it (as %2F)",
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (user, password) = match credentials {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(decode(u)), Some(decode(p))),
                None => (Some(decode(c)), None),
            },
            None => (None, None),
        };
        let endpoints: Vec<String> = if hosts.is_empty() {
            Vec::new()
        } else {
            hosts.split(',').map(str::to_owned).collect()
        };
        if endpoints.iter().any(String::is_empty) {
            return Err(fail("empty host in the host list"));
        }
        let root = path
            .map(|p| p.trim_end_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        if let Some(root) = &root {
            if root.contains("//") {
                return Err(fail("empty segment in the root path"));
            }
        }
        let mut params = BTreeMap::new();
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key.is_empty() {
                return Err(fail("query parameter without a name"));
            }
            params.insert(key.to_owned(), decode(value));
        }
        Ok(RegistryUrl {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            endpoints,
            root,
            params,
        })
    }

    /// Checks what every server backend checks first: the URL is `scheme://`, names
    /// `host:port` endpoints, and has no query parameter outside `known`.
    pub fn expect_server(&self, scheme: &str, known: &[&str]) -> Result<()> {
        if self.scheme != scheme {
            return Err(Error::invalid_url(
                self.to_string(),
                format!("the scheme must be {scheme}://"),
            ));
        }
        self.require_endpoints()?;
        self.deny_unknown_params(known)
    }

    /// Checks that every endpoint is `host:port`, for backends that connect to servers.
    pub fn require_endpoints(&self) -> Result<()> {
        let fail = |reason: String| Error::invalid_url(self.to_string(), reason);
        if self.endpoints.is_empty() {
            return Err(fail("no host:port given".into()));
        }
        for endpoint in &self.endpoints {
            let port = endpoint
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(p))) if !host.is_empty() && p != 0 => {}
                _ => return Err(fail(format!("endpoint {endpoint:?} is not host:port"))),
            }
        }
        Ok(())
    }

    /// Takes the query parameter `key`, if present.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The positive duration in query parameter `key` (`5s`, `500ms`, `1m30s`), if
    /// present; a malformed or zero value is an error naming it.
    pub fn duration_param(&self, key: &str) -> Result<Option<Duration>> {
        let Some(value) = self.param(key) else {
            return Ok(None);
        };
        match humantime::parse_duration(value) {
            Ok(duration) if !duration.is_zero() => Ok(Some(duration)),
            _ => Err(Error::invalid_url(
                self.to_string(),
                format!("{key}={value:?} is not a positive duration such as 5s or 500ms"),
            )),
        }
    }

    /// The user and password the URL carries, as `user:password@` or as `?user=` and
    /// `?password=` (the query wins). Both or neither: one without the other is an error.
    pub fn credentials(&self) -> Result<Option<(String, String)>> {
        let user = self
            .param("user")
            .map(str::to_owned)
            .or_else(|| self.user.clone());
        let password = self
            .param("password")
            .map(str::to_owned)
            .or_else(|| self.password.clone());
        match (user, password) {
            (Some(user), Some(password)) => Ok(Some((user, password))),
            (None, None) => Ok(None),
            (Some(user), None) => Err(Error::invalid_url(
                self.to_string(),
                format!("user {user:?} given without a password"),
            )),
            (None, Some(_)) => Err(Error::invalid_url(
                self.to_string(),
                "password given without a user",
            )),
        }
    }

    /// Fails with the names of any query parameters not in `known`, so a typo is an
    /// error rather than silently ignored.
    pub fn deny_unknown_params(&self, known: &[&str]) -> Result<()> {
        let unknown: Vec<&str> = self
            .params
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_url(
                self.to_string(),
                format!(
                    "unknown parameter(s) {}; known: {}",
                    unknown.join(", "),
                    known.join(", ")
                ),
            ))
        }
    }
}

impl std::str::FromStr for RegistryUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RegistryUrl::parse(s)
    }
}

impl fmt::Display for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.endpoints.join(","))?;
        if let Some(root) = &self.root {
            f.write_str(root)?;
        }
        for (n, (key, value)) in self.params.iter().enumerate() {
            let value = if is_secret(key) { "***" } else { value };
            write!(f, "{}{key}={value}", if n == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryUrl({self})")
    }
}

/// Query parameters whose values are never shown.
fn is_secret(key: &str) -> bool {
    matches!(key, "password" | "passwd" | "token")
}

/// `url` with any password replaced by `***`, for messages about a URL that did not parse.
fn mask_password(url: &str) -> String {
    let url = &match url.split_once('?') {
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_secret(key) => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Up to the query, not the first `/`: an unencoded `/` in a password must not
    // leave the rest of it in view.
    let end = rest.find('?').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((credentials, _)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[credentials.len() + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part() {
        let url = RegistryUrl::parse("zk://127.0.0.1:2181/leasehold?format=curator&timeout=5s").unwrap();
        assert_eq!(url.scheme, "zk");
        assert_eq!(url.endpoints, ["127.0.0.1:2181"]);
        assert_eq!(url.root.as_deref(), Some("/leasehold"));
        assert_eq!(url.param("timeout"), Some("5s"));
        let memory = RegistryUrl::parse("memory://").unwrap();
        assert!(memory.endpoints.is_empty());
        assert_eq!(memory.root, None);
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let cases = [
            ("127.0.0.1:2379", "expected scheme://"),
            ("etcd://h1:1,,h2:2", "empty host"),
            ("etcd://h:1//x", "empty segment"),
            ("etcd://h:1?=v", "without a name"),
        ];
        for (url, reason) in cases {
            let err = RegistryUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(reason), "{url}: {err}");
        }
        let no_port = RegistryUrl::parse("etcd://host/x").unwrap();
        assert!(no_port
            .require_endpoints()
            .unwrap_err()
            .to_string()
            .contains("not host:port"));
        let unknown = RegistryUrl::parse("etcd://h:1?fromat=x").unwrap();
        assert!(unknown
            .deny_unknown_params(&["format"])
            .unwrap_err()
            .to_string()
            .contains("fromat"));
    }

    #[test]
    fn durations_and_credentials() {
        let url = RegistryUrl::parse("etcd://u:p@h:1/x?connect_timeout=1m30s&bad=0s&worse=soon").unwrap();
        assert_eq!(
            url.duration_param("connect_timeout").unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(url.duration_param("absent").unwrap(), None);
        for key in ["bad", "worse"] {
            let err = url.duration_param(key).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{key}=")) && err.contains("positive duration"),
                "{err}"
            );
        }
        assert_eq!(url.credentials().unwrap(), Some(("u".into(), "p".into())));
        let query = RegistryUrl::parse("zk://h:1?user=a&password=b").unwrap();
        assert_eq!(query.credentials().unwrap(), Some(("a".into(), "b".into())));
        let half = RegistryUrl::parse("zk://h:1?user=a").unwrap();
        assert!(half
            .credentials()
            .unwrap_err()
            .to_string()
            .contains("without a password"));
        assert_eq!(
            RegistryUrl::parse("zk://h:1").unwrap().credentials().unwrap(),
            None
        );
    }

    #[test]
    fn passwords_never_show() {
        let url = RegistryUrl::parse("etcd://root:hunter2@h:1/x").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        let err = RegistryUrl::parse("etcd://root:hunter2@h:1//x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
