//! How the server describes each service to clients.

use std::collections::HashMap;

use leasehold::ServiceName;

/// How clients balance calls over a service's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balancing {
    /// Each call to the next endpoint, in proportion to the instances' weights.
    #[default]
    RoundRobin,
    /// Consistent hashing: calls with the same hash go to the same endpoint while it
    /// lives, and only about 1/N of them move when an endpoint joins or leaves.
    RingHash {
        /// The request header (gRPC metadata key) whose value is hashed; without one,
        /// gRPC clients hash each call at random.
        header: Option<String>,
    },
}

/// What [`XdsServer`](crate::XdsServer) serves beyond the registry's contents.
#[derive(Clone, Debug, Default)]
pub struct XdsOptions {
    ring_hash: HashMap<ServiceName, Option<String>>,
}

impl XdsOptions {
    /// Balances `service` by ring hash, on the value of `header` if given. Services not
    /// named this way are balanced round robin.
    pub fn ring_hash(mut self, service: ServiceName, header: Option<String>) -> Self {
        self.ring_hash.insert(service, header);
        self
    }

    /// How `service` is balanced.
    pub fn balancing(&self, service: &ServiceName) -> Balancing {
        match self.ring_hash.get(service) {
            Some(header) => Balancing::RingHash {
                header: header.clone(),
            },
            None => Balancing::RoundRobin,
        }
    }
}
