//! The pure core: recipes → graph → plan → cache keys, and the lockfile model.
//! Nothing in here touches the file system, the network or the Docker daemon.

pub mod apt;
pub mod debversion;
pub mod deploy;
pub mod gitsource;
pub mod graph;
pub mod key;
pub mod lockdiff;
pub mod lockfile;
pub mod makespan;
pub mod names;
pub mod plan;
pub mod procedure;
pub mod recipe;
pub mod rootfs_lock;
pub mod rootfs_merge;
pub mod rootfs_recipe;
pub mod roots;
pub mod schedule;
pub mod site;
pub mod urlsource;
pub mod verdict;
