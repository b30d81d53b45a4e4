//! The Greeter gRPC service of leasehold's examples and tests: generated client and
//! server, and a small implementation that answers with the address it serves on.
//!
//! It lives in its own unpublished crate so that only examples and tests run `protoc`:
//! a user's build of `leasehold-tower` or `leasehold-server` compiles no proto.

use tonic::{Request, Response, Status};

tonic::include_proto!("greeter");

pub use greeter_client::GreeterClient;
pub use greeter_server::{Greeter, GreeterServer};

/// A Greeter that says hello and names the server that answered, so a test can tell
/// which instance served a call.
#[derive(Clone, Debug)]
pub struct Hello {
    server: String,
}

impl Hello {
    /// A Greeter that reports `server` (usually its listening address) in every reply.
    pub fn new(server: impl Into<String>) -> Self {
        Hello {
            server: server.into(),
        }
    }

    /// This Greeter as a tonic service, ready for `Server::builder().add_service(..)`.
    pub fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.into_inner().name),
            server: self.server.clone(),
        }))
    }
}
