//! kci-build: reproducible, content-addressed builds of KernelCI's toolchain images.

pub mod core;
pub mod context;
pub mod dpkg;
pub mod fsutil;
pub mod image;
pub mod layer;
pub mod store;
pub mod bootstrap;
pub mod cli;
pub mod docker;
pub mod error;
pub mod ops;
pub mod printer;
