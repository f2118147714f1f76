//! kci-build: reproducible, content-addressed builds of KernelCI's toolchain images and
//! rootfs files.
//!
//! The floors, bottom up (ARCHITECTURE.md has the map, a line per module); a module uses
//! its own floor and those below, and a command never uses another command:
//!
//! 0. [`core`]: pure models, keys, plans, schedules, lockfiles and diffs.
//! 1. foundations: [`error`], [`settings`], [`weburl`], [`fsutil`], [`printer`], [`store`], [`lockedit`], [`context`],
//!    [`layer`], [`layerdiff`], [`image`], [`dpkg`].
//! 2. services: [`engine`], [`registry`], [`storage`], [`bootstrap`].
//! 3. engines: [`workspace`], [`imagebuild`], [`publish`], [`rootfs`], [`exit`].
//! 4. commands: [`ops`], one module per command, one contract.
//! 5. entry: [`cli`], [`runner`] (and `main.rs`).

pub mod aptcache;
pub mod aptpins;
pub mod aptproxy;
pub mod aptshare;
pub mod backend;
pub mod bootstrap;
pub mod cli;
pub mod context;
pub mod core;
pub mod dpkg;
pub mod engine;
pub mod error;
pub mod exit;
pub mod fsutil;
pub mod gc;
pub mod gitpins;
pub mod gitstore;
pub mod httpserve;
pub mod image;
pub mod imagebuild;
pub mod jenkins;
pub mod layer;
pub mod layeraudit;
pub mod layerdiff;
pub mod lockedit;
pub mod lockhistory;
pub mod mitm;
pub mod ops;
pub mod pinserve;
pub mod printer;
pub mod prod;
pub mod publish;
pub mod registry;
pub mod rootfs;
pub mod runner;
pub mod settings;
pub mod storage;
pub mod store;
pub mod storeverify;
pub mod urlpins;
pub mod weburl;
pub mod workspace;
