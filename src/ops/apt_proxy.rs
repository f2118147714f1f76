//! `kci-build apt-proxy` (hidden): the rootfs builds' apt proxy as a process of its own,
//! started and leased by `kci-build rootfs` (see [`crate::aptproxy`]). Not for people.

use super::Context;
use crate::aptproxy::{self, ServeOptions};
use crate::store::Store;

pub async fn run(ctx: &Context, opts: &ServeOptions) -> anyhow::Result<()> {
    let store = Store::at(&ctx.paths.store);
    aptproxy::serve(&store, &ctx.settings, opts, &ctx.printer).await
}
