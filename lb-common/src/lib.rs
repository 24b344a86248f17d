//! Map keys and values shared by the kernel programs and the agent.
//!
//! Every type is `#[repr(C)]`, made of integers and arrays only, with explicit
//! padding, so any bit pattern is a valid value (`aya::Pod` behind `user`).
#![no_std]

/// `aya::Pod` for each of the types given, all `#[repr(C)]` integers and
/// arrays with explicit padding.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: the type is repr(C), made of integers and byte arrays with
        // explicit padding fields, so every bit pattern is a valid value.
        unsafe impl aya::Pod for $t {}
    )*};
}

pub mod addr;
pub mod maps;
pub mod policy;
pub mod reasons;

pub use addr::{BeU16, NetAddr};
pub use maps::*;
pub use policy::*;
pub use reasons::*;
