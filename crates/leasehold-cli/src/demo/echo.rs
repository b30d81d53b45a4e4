//! The demo's echo servers, each registered through its own registry client.

use std::net::SocketAddr;
use std::time::Duration;

use leasehold::memory::{MemoryRegistry, MemoryStore};
use leasehold::{Instance, RegisterOptions, Registration, Registry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::timeline::Timeline;
use super::SERVICE;
use crate::error::{CliError, Context};

/// A TCP server on loopback that answers each line `text` with `{name} {text}`, so the
/// client can tell who served it, registered as instance `name` of [`SERVICE`].
///
/// Each server has its own [`MemoryRegistry`] client of the shared store, as a separate
/// process would have its own connection to etcd.
pub struct EchoServer {
    name: String,
    registry: MemoryRegistry,
    registration: Registration,
    listening: JoinHandle<()>,
    timeline: Timeline,
}

impl EchoServer {
    /// Binds `127.0.0.1:0`, starts answering, and registers with a lease of `ttl`.
    pub async fn start(
        name: &str,
        store: &MemoryStore,
        ttl: Duration,
        timeline: Timeline,
    ) -> Result<Self, CliError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context(format_args!("{name}: binding a loopback port"))?;
        let addr: SocketAddr = listener
            .local_addr()
            .context(format_args!("{name}: reading its address"))?;
        let listening = tokio::spawn(listen(listener, name.to_owned()));
        timeline.log(name, format_args!("listening on {addr}, registering"));
        let registry = MemoryRegistry::with_store(store.clone());
        let instance = Instance::builder(SERVICE, addr.to_string()).id(name).build()?;
        let registration = registry
            .register(instance, RegisterOptions::ttl(ttl))
            .await
            .context(format_args!("{name}: registering"))?;
        Ok(EchoServer {
            name: name.to_owned(),
            registry,
            registration,
            listening,
            timeline,
        })
    }

    /// Deregisters first, so clients stop picking it, then closes the listener.
    pub async fn shut_down(self) -> Result<(), CliError> {
        self.registration
            .deregister()
            .await
            .context(format_args!("{}: deregistering", self.name))?;
        self.listening.abort();
        let _ = self.listening.await;
        Ok(())
    }

    /// Simulates the process dying: the lease is no longer renewed, nothing is
    /// deregistered, and the listener closes, so the registry lists the server until its
    /// TTL runs out while connections to it are refused.
    pub async fn crash(self) {
        self.registry.crash();
        self.listening.abort();
        let _ = self.listening.await;
        self.timeline.log(
            &self.name,
            "crashed: listener closed, lease no longer renewed; the registry keeps it until the TTL runs out",
        );
        drop(self.registration);
    }
}

async fn listen(listener: TcpListener, name: String) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, name.clone()));
            }
            Err(e) => tracing::warn!(server = name, error = %e, "accept failed"),
        }
    }
}

async fn answer(stream: TcpStream, name: String) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{name} {line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
