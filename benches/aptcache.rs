//! Serving throughput of the apt cache: `cargo bench --bench aptcache -- <store> <lockfile>`.
//!
//! Every `.deb` the lockfile's targets were built from that `<store>`'s cache holds is
//! fetched through the cache's proxy as apt fetches it (absolute-form URLs, one keep-alive
//! connection, one file after the other), with the upstream set to a closed port so nothing
//! can come from the mirror; then the same files are read from disk. The page cache is warm
//! for both (a first pass through the proxy loads the pinned `Packages` index and verifies
//! every cached file once, as the first request of a process does). Prints MB/s and the ratio.

use std::time::Instant;

use kci_build::aptcache::AptCache;
use kci_build::core::apt::SuiteSource;
use kci_build::core::lockfile::Lockfile;
use kci_build::settings::{AptUpstream, Env, Settings};
use kci_build::store::Store;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [store, lockfile] = args.as_slice() else {
        eprintln!("usage: aptcache <store> <images.lock>");
        std::process::exit(1);
    };
    let lock = Lockfile::parse(lockfile.as_ref(), &std::fs::read_to_string(lockfile)?)?;
    let store = Store::open(store.as_ref())?;
    let settings = Settings::resolve(None, &Env::from_process())?;
    let mirror = settings
        .debian_mirror
        .ok_or_else(|| anyhow::anyhow!("no Debian mirror"))?;
    let suite = lock.pins().keys().next().cloned().expect("a pinned suite");
    let origin = SuiteSource::of_mirror(&mirror, suite.suite())
        .map_err(anyhow::Error::msg)?
        .origin;
    let offline = AptUpstream::parse("http://127.0.0.1:1")?;
    let cache = AptCache::new(store.clone(), offline, lock.pins());
    let debs: Vec<(String, kci_build::core::names::Digest)> = lock
        .targets
        .values()
        .flat_map(|t| t.deb.clone())
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .filter(|(_, d)| store.has_blob(d)) // what `fetch` cached for the benchmarked targets
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let proxy = cache.serve().await?;
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(proxy.url())?)
            .build()?;
        let pass = |label: &'static str| {
            let client = client.clone();
            let (origin, debs) = (origin.clone(), debs.clone());
            async move {
                let t0 = Instant::now();
                let mut bytes = 0u64;
                for (path, _) in &debs {
                    let resp = client.get(format!("{origin}/{path}")).send().await?;
                    anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
                    bytes += resp.bytes().await?.len() as u64;
                }
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "{label}: {} files, {:.1} MiB in {secs:.3} s = {:.0} MB/s",
                    debs.len(),
                    bytes as f64 / 1048576.0,
                    bytes as f64 / 1e6 / secs
                );
                anyhow::Ok(bytes as f64 / 1e6 / secs)
            }
        };
        pass("proxy, first pass (index load + verify)").await?;
        let served = pass("proxy").await?;
        let t0 = Instant::now();
        let mut bytes = 0u64;
        for (_, d) in &debs {
            bytes += std::fs::read(store.blob_path(d))?.len() as u64;
        }
        let secs = t0.elapsed().as_secs_f64();
        let disk = bytes as f64 / 1e6 / secs;
        println!(
            "disk: {} files, {:.1} MiB in {secs:.3} s = {disk:.0} MB/s",
            debs.len(),
            bytes as f64 / 1048576.0
        );
        println!(
            "ratio disk/proxy: {:.2}x; upstream bytes: {}",
            disk / served,
            cache.stats().upstream_bytes
        );
        anyhow::Ok(())
    })
}
