//! kci-build: reproducible, content-addressed builds of KernelCI's toolchain images.

pub mod bootstrap;
pub mod cli;
pub mod context;
pub mod core;
pub mod docker;
pub mod dpkg;
pub mod error;
pub mod exit;
pub mod fsutil;
pub mod image;
pub mod imagebuild;
pub mod layer;
pub mod layerdiff;
pub mod lockedit;
pub mod ops;
pub mod printer;
pub mod publish;
pub mod registry;
pub mod rootfs;
pub mod runner;
pub mod storage;
pub mod store;
pub mod workspace;
