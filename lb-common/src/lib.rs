//! Map keys and values shared by the kernel programs and the agent.
//!
//! Every type is `#[repr(C)]`, made of integers and arrays only, with explicit
//! padding, so any bit pattern is a valid value (`aya::Pod` behind `user`).
#![no_std]

pub mod addr;
pub mod maps;
pub mod policy;

pub use addr::{BeU16, NetAddr};
pub use maps::*;
pub use policy::*;
