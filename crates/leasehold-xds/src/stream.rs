//! The loop every ADS stream runs, whichever variant of the protocol it speaks: answer
//! the client's requests, push what changed in the services it follows, and end when
//! either side closes or the server shuts down.

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::sources::Sources;

/// The identifier sent as the responses' control plane, for clients' debug pages.
pub const CONTROL_PLANE: &str = "leasehold-xds";

/// One variant of the ADS protocol (state of the world, or incremental) on one stream.
pub trait Protocol {
    /// What the client sends.
    type Request;
    /// What the server sends.
    type Response;

    /// Handles one request; returns the response to send, if one is due.
    fn on_request(&mut self, request: Self::Request) -> Option<Self::Response>;

    /// Called when a followed service's endpoints may have changed; returns the push, if
    /// one is due.
    fn on_endpoints_changed(&mut self) -> Option<Self::Response>;

    /// Where the stream's resources come from.
    fn sources(&mut self) -> &mut Sources;

    /// The client's node id, for logs (empty until a request named it).
    fn client(&self) -> &str;
}

/// Runs `protocol` over one stream until `requests` ends, the client stops reading, or
/// `closing` turns true (then the stream ends with `UNAVAILABLE`, so clients reconnect).
pub async fn run<P: Protocol>(
    mut protocol: P,
    mut requests: impl Stream<Item = Result<P::Request, Status>> + Unpin,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let response = tokio::select! {
            () = until_closing(&mut closing) => {
                tracing::debug!(client = %protocol.client(), "server shutting down: ending the stream");
                let _ = responses.send(Err(Status::unavailable("the xDS server is shutting down"))).await;
                return;
            }
            request = requests.next() => match request {
                Some(Ok(request)) => protocol.on_request(request),
                Some(Err(status)) => {
                    tracing::debug!(client = %protocol.client(), %status, "stream broken");
                    return;
                }
                None => {
                    tracing::debug!(client = %protocol.client(), "client closed the stream");
                    return;
                }
            },
            () = protocol.sources().changed() => protocol.on_endpoints_changed(),
        };
        if let Some(response) = response {
            if responses.send(Ok(response)).await.is_err() {
                tracing::debug!(client = %protocol.client(), "client went away");
                return;
            }
        }
    }
}

/// Completes once `closing` is true (or its sender is gone).
async fn until_closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}
