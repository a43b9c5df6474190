//! Egress: how loongd reaches the network on a sandbox's behalf.

pub(crate) mod ranges;
pub(crate) mod resolve;
