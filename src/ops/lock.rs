//! `kci-build lock --check`: for CI, fail when the lockfile does not describe the recipes.
//! `kci-build lock --refresh [SUITE…]`: move the apt index pins to today's index (and, with
//! no suite named, the rootfs recipes' git sources and downloads to today's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{Context, Report, Workspace};
use crate::core::apt::{SuiteId, SuiteSource};
use crate::core::lockfile::LockedIndex;
use crate::core::names::Digest;
use crate::lockedit::{LockfileEdit, Written};
use crate::printer::Printer;
use crate::store::Store;

/// What `lock --check` found.
#[derive(Debug, serde::Serialize)]
pub struct LockReport {
    pub lockfile: std::path::PathBuf,
    pub targets: usize,
    /// Empty: the lockfile describes the recipes.
    pub problems: Vec<String>,
}

impl Report for LockReport {
    fn show(&self, printer: &Printer) {
        if self.problems.is_empty() {
            printer.status(
                "Checked",
                format!(
                    "{} matches the recipes ({} targets)",
                    self.lockfile.display(),
                    self.targets
                ),
            );
        }
    }

    fn verdict(&self) -> anyhow::Result<()> {
        if !self.problems.is_empty() {
            anyhow::bail!(
                "{} is out of date:\n  {}\nhelp: run `kci-build build` and commit the lockfile",
                self.lockfile.display(),
                self.problems.join("\n  ")
            );
        }
        Ok(())
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<LockReport> {
    let ws = ctx.workspace()?;
    Ok(LockReport {
        lockfile: ws.paths.lockfile.clone(),
        targets: ws.lock.targets.len(),
        problems: problems(&ws)?,
    })
}

/// The problems found; empty means the lockfile is up to date.
fn problems(ws: &Workspace) -> anyhow::Result<Vec<String>> {
    let planned = ws.plan_for(&[])?;
    let drift = crate::core::plan::drift(&ws.lock, &planned, true);
    Ok(drift.iter().map(ToString::to_string).collect())
}

/// What `lock --refresh` is asked.
#[derive(Debug, Clone)]
pub struct RefreshOptions {
    /// Suites to refresh; all when empty.
    pub suites: Vec<SuiteId>,
    pub recipes: PathBuf,
    pub rootfs_lockfile: PathBuf,
}

/// One suite's pin before and after `lock --refresh`, in one lockfile.
#[derive(Debug, serde::Serialize)]
pub struct Refreshed {
    pub lockfile: PathBuf,
    pub suite: String,
    pub old: Option<String>,
    pub new: String,
    pub date: Option<String>,
}

/// One git source's pin before and after `lock --refresh`.
#[derive(Debug, serde::Serialize)]
pub struct RefreshedSource {
    pub name: String,
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub old: Option<String>,
    pub new: String,
}

/// One download's pin before and after `lock --refresh`.
#[derive(Debug, serde::Serialize)]
pub struct RefreshedDownload {
    pub name: String,
    pub url: String,
    pub old: Option<Digest>,
    pub new: Digest,
    pub size: u64,
}

/// What `lock --refresh` did.
#[derive(Debug, serde::Serialize)]
pub struct RefreshReport {
    pub suites: Vec<Refreshed>,
    /// The rootfs recipes' git sources (refreshed when no suite is named).
    pub git_sources: Vec<RefreshedSource>,
    /// The rootfs recipes' downloads (fetched again when no suite is named).
    pub downloads: Vec<RefreshedDownload>,
    /// The lockfiles written.
    pub changed: Vec<PathBuf>,
}

impl Report for RefreshReport {
    fn show(&self, printer: &Printer) {
        for r in &self.suites {
            let date = r.date.as_deref().unwrap_or("no date");
            let file = r.lockfile.display();
            match &r.old {
                Some(old) if *old == r.new => {
                    printer.status("Unchanged", format!("{} in {file} ({date})", r.suite))
                }
                Some(old) => printer.status(
                    "Refreshed",
                    format!(
                        "{} in {file}: {} -> {} ({date})",
                        r.suite,
                        short(old),
                        short(&r.new)
                    ),
                ),
                None => printer.status(
                    "Pinned",
                    format!("{} in {file}: {} ({date})", r.suite, short(&r.new)),
                ),
            }
        }
        for g in &self.git_sources {
            let what = format!("git source {} ({} of {})", g.name, g.git_ref, g.url);
            match &g.old {
                Some(old) if *old == g.new => printer.status("Unchanged", what),
                Some(old) => printer.status(
                    "Refreshed",
                    format!("{what}: {} -> {}", &old[..12], &g.new[..12]),
                ),
                None => printer.status("Pinned", format!("{what}: {}", &g.new[..12])),
            }
        }
        for d in &self.downloads {
            let what = format!("download {} ({})", d.name, d.url);
            match &d.old {
                Some(old) if *old == d.new => printer.status("Unchanged", what),
                Some(old) => printer.status(
                    "Refreshed",
                    format!(
                        "{what}: {} -> {} ({} bytes)",
                        old.short(),
                        d.new.short(),
                        d.size
                    ),
                ),
                None => printer.status(
                    "Pinned",
                    format!("{what}: {} ({} bytes)", d.new.short(), d.size),
                ),
            }
        }
        for f in &self.changed {
            printer.status(
                "Locking",
                format!(
                    "{}: its keys changed; the next build installs the new index's packages",
                    f.display()
                ),
            );
        }
    }
}

fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .map_or(d, |h| &h[..12.min(h.len())])
}

/// `lock --refresh [SUITE…]`: pins today's `InRelease` of the named suites (all the recipes
/// install from when none are named) in the images lockfile and, when it exists, the rootfs
/// lockfile; a pin no recipe uses any more is dropped.
pub async fn refresh(ctx: &Context, opts: &RefreshOptions) -> anyhow::Result<RefreshReport> {
    let ws = ctx.workspace()?;
    Store::open(ws.store.root())?; // the apt cache lives in it
    let image_suites = crate::aptpins::image_suites(&ws)?;
    let rootfs = LockfileEdit::read(&opts.rootfs_lockfile)?;
    let rootfs_lock = rootfs
        .text()
        .is_some()
        .then(|| rootfs.rootfs())
        .transpose()?;
    let rootfs_suites = match &rootfs_lock {
        Some(_) => rootfs_suites(&ws, &opts.recipes)?,
        None => Vec::new(),
    };
    for s in &opts.suites {
        if !image_suites
            .iter()
            .chain(&rootfs_suites)
            .any(|src| &src.id == s)
        {
            let known: BTreeSet<String> = image_suites
                .iter()
                .chain(&rootfs_suites)
                .map(|s| s.id.to_string())
                .collect();
            anyhow::bail!(
                "no recipe installs from {s}; the suites are: {}",
                known.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut today = Today::default();
    let mut report = RefreshReport {
        suites: Vec::new(),
        git_sources: Vec::new(),
        downloads: Vec::new(),
        changed: Vec::new(),
    };
    let mut images = ws.lock.clone();
    images.apt_index = today
        .refresh(
            &ws,
            &images.apt_index,
            &image_suites,
            opts,
            &ws.paths.lockfile,
            &mut report,
        )
        .await?;
    let edit = LockfileEdit::from_text(&ws.paths.lockfile, ws.lock_text.clone());
    if edit.write(&images.to_text(), false, "", Vec::new)? == Written::Written {
        report.changed.push(ws.paths.lockfile.clone());
    }
    if let Some(mut lock) = rootfs_lock {
        let file = &opts.rootfs_lockfile;
        lock.apt_index = today
            .refresh(
                &ws,
                &lock.apt_index,
                &rootfs_suites,
                opts,
                file,
                &mut report,
            )
            .await?;
        if opts.suites.is_empty() {
            lock.git_source =
                refresh_git_sources(&ws, &lock.git_source, &opts.recipes, &mut report)?;
            lock.url_source =
                refresh_downloads(&ws, &lock.url_source, &opts.recipes, &mut report).await?;
        }
        if rootfs.write(&lock.to_text(), false, "", Vec::new)? == Written::Written {
            report.changed.push(file.clone());
        }
    }
    Ok(report)
}

/// Today's commit of every git source the rootfs recipes name (pins of sources no recipe
/// names are dropped).
fn refresh_git_sources(
    ws: &Workspace,
    have: &BTreeMap<String, crate::core::gitsource::LockedSource>,
    recipes: &Path,
    report: &mut RefreshReport,
) -> anyhow::Result<BTreeMap<String, crate::core::gitsource::LockedSource>> {
    let specs = crate::gitpins::specs_of(recipes, &crate::rootfs::recipes::load_recipes(recipes)?)?;
    let store = crate::gitstore::GitStore::new(ws.store.root());
    let mut pins = BTreeMap::new();
    for (name, spec) in &specs {
        let pin = store.resolve(name, &spec.url, &spec.git_ref)?;
        report.git_sources.push(RefreshedSource {
            name: name.clone(),
            url: spec.url.clone(),
            git_ref: spec.git_ref.clone(),
            old: have.get(name).map(|p| p.commit.to_string()),
            new: pin.commit.to_string(),
        });
        pins.insert(name.clone(), pin);
    }
    Ok(pins)
}

/// Today's bytes of every download the rootfs recipes name (pins of downloads no recipe
/// names are dropped); a recipe's own sha256 still has to match.
async fn refresh_downloads(
    ws: &Workspace,
    have: &BTreeMap<String, crate::core::urlsource::LockedUrl>,
    recipes: &Path,
    report: &mut RefreshReport,
) -> anyhow::Result<BTreeMap<String, crate::core::urlsource::LockedUrl>> {
    let specs = crate::urlpins::specs_of(recipes, &crate::rootfs::recipes::load_recipes(recipes)?)?;
    let downloader = crate::urlpins::Downloader {
        store: &ws.store,
        rules: &ws.env.download_from,
    };
    let mut pins = BTreeMap::new();
    for (name, spec) in &specs {
        let pin = downloader.pin(spec).await?;
        report.downloads.push(RefreshedDownload {
            name: name.clone(),
            url: spec.url.clone(),
            old: have.get(name).map(|p| p.sha256.clone()),
            new: pin.sha256.clone(),
            size: pin.size,
        });
        pins.insert(name.clone(), pin);
    }
    Ok(pins)
}

/// The suites of the rootfs recipes.
fn rootfs_suites(ws: &Workspace, recipes: &Path) -> anyhow::Result<Vec<SuiteSource>> {
    let mut out = BTreeSet::new();
    for r in crate::rootfs::recipes::load_recipes(recipes)? {
        let mirror =
            crate::rootfs::recipes::mirror_of(recipes, &r, ws.env.debian_mirror.as_deref())?;
        out.insert(crate::aptpins::rootfs_suite(&mirror, &r)?);
    }
    Ok(out.into_iter().collect())
}

/// Today's pins, each fetched once for both lockfiles.
#[derive(Default)]
struct Today(BTreeMap<SuiteId, LockedIndex>);

impl Today {
    /// `have` with today's pin of each of `suites` asked for; pins of suites no recipe uses
    /// are dropped when every suite is refreshed.
    async fn refresh(
        &mut self,
        ws: &Workspace,
        have: &BTreeMap<SuiteId, LockedIndex>,
        suites: &[SuiteSource],
        opts: &RefreshOptions,
        lockfile: &Path,
        report: &mut RefreshReport,
    ) -> anyhow::Result<BTreeMap<SuiteId, LockedIndex>> {
        let mut pins = have.clone();
        let asked = |s: &SuiteSource| opts.suites.is_empty() || opts.suites.contains(&s.id);
        for src in suites.iter().filter(|s| asked(s)) {
            let pin = match self.0.get(&src.id) {
                Some(p) => p.clone(),
                None => crate::aptpins::current(ws, src).await?,
            };
            self.0.insert(src.id.clone(), pin.clone());
            report.suites.push(Refreshed {
                lockfile: lockfile.to_owned(),
                suite: src.id.to_string(),
                old: have.get(&src.id).map(|o| o.inrelease.to_string()),
                new: pin.inrelease.to_string(),
                date: pin.date.clone(),
            });
            pins.insert(src.id.clone(), pin);
        }
        if opts.suites.is_empty() {
            pins.retain(|s, _| suites.iter().any(|src| &src.id == s));
        }
        Ok(pins)
    }
}
