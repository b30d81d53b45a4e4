//! Client-side load balancing over leasehold discovery.
#![warn(missing_docs)]

pub mod balance;
