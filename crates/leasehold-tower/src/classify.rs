//! Which responses count as a failure of the instance that sent them.
//!
//! A response is judged first by its HTTP status and head, and, for gRPC, by the
//! `grpc-status` that ends it: in the head of a trailers-only response, else in the
//! trailers, which arrive after the body (every streaming call, and most unary ones).
//! [`ClassifiedBody`] watches the body for them, so a call that fails in its trailers is
//! reported to the balancer and the outlier detector when it ends.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

/// The verdict on a response's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The instance answered.
    Success,
    /// The instance failed.
    Failure,
    /// A gRPC response whose status comes in the trailers.
    Trailers,
}

/// Decides which responses are failures of the instance: they count toward its ejection
/// and lower its standing with load-aware balancers, and a failure seen in the head is
/// retried (when the request may be).
///
/// The default set ([`Classifier::default`]):
/// - HTTP 500, 502, 503 and 504 (the server broke, or a proxy in front of it found it
///   gone or slow); other statuses are the application's answer;
/// - gRPC `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`, in
///   the head or the trailers (Envoy's outlier detection counts the same, as 5xx);
/// - a gRPC response that ends without any `grpc-status` (a connection cut mid-call).
///
/// Other gRPC codes (`NOT_FOUND`, `INVALID_ARGUMENT`, `PERMISSION_DENIED`…) are answers.
///
/// ```
/// use leasehold_tower::Classifier;
/// // Also count RESOURCE_EXHAUSTED (an overloaded instance) and HTTP 429.
/// let classifier = Classifier::default()
///     .grpc_failures([tonic::Code::Unknown, tonic::Code::Internal, tonic::Code::Unavailable,
///                     tonic::Code::ResourceExhausted])
///     .http_failures(|status| status.is_server_error() || status.as_u16() == 429);
/// assert!(classifier.is_grpc_failure(tonic::Code::ResourceExhausted));
/// assert!(!classifier.is_grpc_failure(tonic::Code::NotFound));
/// ```
#[derive(Clone)]
pub struct Classifier {
    http: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
    /// Bit `c` set: gRPC code `c` is a failure.
    grpc: u32,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            http: Arc::new(|status| matches!(status.as_u16(), 500 | 502..=504)),
            grpc: 0,
        }
        .grpc_failures([
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Internal,
            tonic::Code::Unavailable,
            tonic::Code::DataLoss,
        ])
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<tonic::Code> = (0..17)
            .filter(|c| self.grpc & (1 << c) != 0)
            .map(tonic::Code::from_i32)
            .collect();
        f.debug_struct("Classifier")
            .field("grpc_failures", &codes)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// The default set; see [`Classifier`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the gRPC codes that are failures (replacing the default ones).
    pub fn grpc_failures(mut self, codes: impl IntoIterator<Item = tonic::Code>) -> Self {
        self.grpc = codes.into_iter().fold(0, |bits, code| bits | 1 << (code as i32));
        self
    }

    /// Sets the HTTP statuses that are failures (replacing 500 and 502–504).
    pub fn http_failures(mut self, failure: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.http = Arc::new(failure);
        self
    }

    /// Whether gRPC `code` is a failure.
    pub fn is_grpc_failure(&self, code: tonic::Code) -> bool {
        self.grpc & (1 << (code as i32)) != 0
    }

    /// Whether HTTP `status` is a failure.
    pub fn is_http_failure(&self, status: StatusCode) -> bool {
        (self.http)(status)
    }

    /// Judges a response by its head.
    pub fn head(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        if self.is_http_failure(status) {
            return Verdict::Failure;
        }
        if let Some(failed) = self.grpc_status(headers) {
            return if failed {
                Verdict::Failure
            } else {
                Verdict::Success
            };
        }
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            Verdict::Trailers
        } else {
            Verdict::Success
        }
    }

    /// Judges a gRPC response by its trailers (`None`: it ended without any, which a
    /// gRPC server never does).
    pub fn trailers(&self, trailers: Option<&HeaderMap>) -> bool {
        trailers.and_then(|t| self.grpc_status(t)).unwrap_or(true)
    }

    /// Whether the `grpc-status` in `headers` is a failure; `None` without one.
    fn grpc_status(&self, headers: &HeaderMap) -> Option<bool> {
        let value = headers.get("grpc-status")?;
        let code = std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
        Some(self.is_grpc_failure(code))
    }
}

/// Told how a response ended: `Some(failed)`, or `None` if it was dropped unfinished.
pub(crate) trait OnEnd: Send + 'static {
    fn ended(self: Box<Self>, failed: Option<bool>);
}

pin_project_lite::pin_project! {
    /// A response body that reports how the response ended: by the `grpc-status` in its
    /// trailers (for a response whose head left it open), an error, or its end.
    ///
    /// Dropped before the end, it reports nothing about the instance (the caller gave
    /// up), unless the verdict was already known from the head.
    pub struct ClassifiedBody<B> {
        #[pin]
        inner: B,
        watch: Option<(Classifier, Box<dyn OnEnd>)>,
    }

    impl<B> PinnedDrop for ClassifiedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((_, on_end)) = this.project().watch.take() {
                on_end.ended(None);
            }
        }
    }
}

impl<B> fmt::Debug for ClassifiedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifiedBody")
            .field("watching", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> ClassifiedBody<B> {
    /// A body whose outcome is already known, or needs no report.
    pub(crate) fn plain(inner: B) -> Self {
        ClassifiedBody { inner, watch: None }
    }

    /// A body whose trailers decide the outcome, reported to `on_end`.
    pub(crate) fn watched(inner: B, classifier: Classifier, on_end: Box<dyn OnEnd>) -> Self {
        ClassifiedBody {
            inner,
            watch: Some((classifier, on_end)),
        }
    }
}

impl<B> Body for ClassifiedBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some((classifier, _)) = this.watch.as_ref() {
            let verdict = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| classifier.trailers(Some(t))),
                Poll::Ready(Some(Err(_))) => Some(true),
                Poll::Ready(None) => Some(classifier.trailers(None)),
                Poll::Pending => None,
            };
            if let Some(failed) = verdict {
                if let Some((_, on_end)) = this.watch.take() {
                    on_end.ended(Some(failed));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_default_set() {
        let c = Classifier::default();
        let grpc = headers(&[("content-type", "application/grpc")]);
        assert_eq!(c.head(StatusCode::OK, &grpc), Verdict::Trailers);
        assert_eq!(c.head(StatusCode::OK, &headers(&[])), Verdict::Success);
        assert_eq!(
            c.head(StatusCode::SERVICE_UNAVAILABLE, &headers(&[])),
            Verdict::Failure
        );
        assert_eq!(c.head(StatusCode::NOT_FOUND, &headers(&[])), Verdict::Success);
        let only = headers(&[("content-type", "application/grpc"), ("grpc-status", "13")]);
        assert_eq!(
            c.head(StatusCode::OK, &only),
            Verdict::Failure,
            "trailers-only INTERNAL"
        );
        let found = headers(&[("content-type", "application/grpc"), ("grpc-status", "5")]);
        assert_eq!(
            c.head(StatusCode::OK, &found),
            Verdict::Success,
            "NOT_FOUND is an answer"
        );
        for (code, failed) in [("0", false), ("14", true), ("2", true), ("4", true), ("3", false)] {
            let trailers = headers(&[("grpc-status", code)]);
            assert_eq!(c.trailers(Some(&trailers)), failed, "{code}");
        }
        assert!(
            c.trailers(None),
            "a gRPC response that ends without a status failed"
        );
    }

    #[test]
    fn the_set_is_configurable() {
        let c = Classifier::default()
            .grpc_failures([tonic::Code::ResourceExhausted])
            .http_failures(|s| s.as_u16() == 429);
        assert!(c.trailers(Some(&headers(&[("grpc-status", "8")]))));
        assert!(!c.trailers(Some(&headers(&[("grpc-status", "14")]))));
        assert_eq!(
            c.head(StatusCode::TOO_MANY_REQUESTS, &headers(&[])),
            Verdict::Failure
        );
        assert_eq!(c.head(StatusCode::BAD_GATEWAY, &headers(&[])), Verdict::Success);
    }
}
