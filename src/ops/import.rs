//! `kci-build import rootfs-configs FILE`: KernelCI's rootfs-configs.yaml → `recipes/*.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Context, Done};
use crate::core::recipe::Settings;
use crate::fsutil;
use crate::rootfs::{self, ImportOptions};

pub struct ImportArgs {
    pub file: PathBuf,
    pub out: PathBuf,
    pub release: Option<String>,
    /// The recipes' SOURCE_DATE_EPOCH; default: the image tree's `config.toml`.
    pub source_date_epoch: Option<u64>,
    /// The image recipe tree, for that default.
    pub images: PathBuf,
    /// The kernelci-core every recipe pins.
    pub kernelci_core: crate::core::gitsource::GitSourceSpec,
}

/// How a recipe's header names the file it came from: its name, and when it is in a git
/// work tree, its path there and the commit checked out (`HEAD`), marked `modified` when
/// the file differs from that commit — so a reviewer can tell which kernelci-core a recipe
/// was converted from.
fn source_of(file: &std::path::Path) -> String {
    let name = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let in_git = || -> Option<String> {
        let abs = std::fs::canonicalize(file).ok()?;
        let repo = git2::Repository::discover(abs.parent()?).ok()?;
        let workdir = std::fs::canonicalize(repo.workdir()?).ok()?;
        let rel = abs.strip_prefix(&workdir).ok()?;
        let head = repo.head().ok()?.peel_to_commit().ok()?;
        let origin = repo
            .find_remote("origin")
            .ok()
            .and_then(|r| r.url().map(|u| format!("{u} ")))
            .unwrap_or_default();
        let modified = match repo.status_file(rel) {
            Ok(st) if st.is_empty() => "",
            _ => ", modified",
        };
        let id = head.id().to_string();
        Some(format!(
            "{} of {origin}commit {}{modified}",
            rel.display(),
            &id[..12]
        ))
    };
    in_git().unwrap_or(name)
}

/// Converts and writes the recipes, then says how many and what was not carried over.
pub fn run(ctx: &Context, args: &ImportArgs) -> anyhow::Result<Done> {
    let printer = &ctx.printer;
    let source_date_epoch = match args.source_date_epoch {
        Some(s) => s,
        None => {
            let cfg = args.images.join("config.toml");
            let text = std::fs::read_to_string(&cfg).with_context(|| {
                format!("reading {} (or pass --source-date-epoch)", cfg.display())
            })?;
            Settings::parse(&cfg, &text)?.source_date_epoch
        }
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let known_packages = args.release.as_deref().and_then(|r| {
        let known = packages_of(r);
        if known.is_none() {
            printer.warn(format!(
                "package names are not checked: this machine's apt lists do not cover {r}"
            ));
        }
        known
    });
    let opts = ImportOptions {
        release: args.release.clone(),
        source_date_epoch,
        known_packages,
        kernelci_core: Some(args.kernelci_core.clone()),
    };
    crate::core::gitsource::validate(
        crate::core::rootfs_recipe::KERNELCI_CORE,
        &args.kernelci_core,
    )
    .map_err(|(field, m)| {
        anyhow::anyhow!(
            "--kernelci-core-{}: {m}",
            field.rsplit('.').next().unwrap_or("url")
        )
    })?;
    let mut imported = rootfs::import(&text, &opts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    if let Some(debos) = debos_dir_beside(&args.file) {
        let fetched = fetches_of_scripts(&debos, &mut imported.recipes);
        imported.problems.extend(fetched);
        imported.problems.sort();
    }
    let source = source_of(&args.file);
    for (from, recipe) in &imported.recipes {
        let mut header = format!(
            "# Converted by `kci-build import rootfs-configs` from {source} (config `{from}`).\n"
        );
        for p in imported
            .problems
            .iter()
            .filter(|p| p.starts_with(&format!("{from}.")))
        {
            header.push_str(&format!("# NOTE {}\n", one_line(p)));
        }
        let path = args.out.join(format!("{}.toml", recipe.name));
        fsutil::atomic_write(&path, recipe.to_toml(&header).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        printer.status("Converted", format!("{from} → {}", path.display()));
    }
    for p in &imported.problems {
        printer.warn(format!("{}: {p}", args.file.display()));
    }
    printer.status(
        "Finished",
        format!(
            "{} recipes written, {} fields not carried over (listed above)",
            imported.recipes.len(),
            imported.problems.len()
        ),
    );
    Ok(Done {})
}

/// `text` as one comment line: a field name of the YAML may hold a line break, which must
/// not start a TOML line of the recipe (found by tests/fuzz.rs).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `config/rootfs/debos` of the kernelci-core checkout `file` is in, when it is
/// `<checkout>/config/core/rootfs-configs.yaml`.
fn debos_dir_beside(file: &std::path::Path) -> Option<PathBuf> {
    let debos = file
        .parent()?
        .parent()?
        .join(crate::core::rootfs_recipe::KERNELCI_CORE_DEBOS_DIR.trim_start_matches("config/"));
    debos.join("scripts").is_dir().then_some(debos)
}

/// What each recipe's script fetches at build time. Each download (curl, wget) becomes a
/// `[url-source]` of the recipe, pinned at its first build; what no pin can cover (a clone no
/// `[git-source]` pins, a caching proxy) becomes a `config.script:` note, since a build
/// refuses it.
fn fetches_of_scripts(
    debos: &std::path::Path,
    recipes: &mut [(String, rootfs::RootfsRecipe)],
) -> Vec<String> {
    use crate::core::urlsource::{self, UrlSourceSpec};
    let mut notes = Vec::new();
    for (from, r) in recipes {
        let Some(script) = r.script.clone() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(debos.join(&script)) else {
            continue;
        };
        let downloads = urlsource::downloads_in_script(&text);
        let urls = crate::core::gitsource::urls_in_script(&text);
        let (mirrors, urls): (Vec<String>, Vec<String>) = urls
            .into_iter()
            .partition(|u| is_debian_archive(u) || u.contains("cache"));
        // Mirrors and caches are named without their host: their names stay out of recipes.
        if mirrors.iter().any(|u| is_debian_archive(u)) {
            notes.push(format!(
                "{from}.script: {script} adds an apt source of a Debian archive, which a \
                 build reaches only through kci-build's pinned index"
            ));
        }
        if mirrors.iter().any(|u| !is_debian_archive(u)) {
            notes.push(format!(
                "{from}.script: {script} downloads through a caching proxy (its address is \
                 in the script), which a build refuses; pin what it fetches as [url-source]s"
            ));
        }
        for url in urls {
            if downloads.contains(&url) {
                if !r.url_source.values().any(|s| s.url == url) {
                    let name = free_name(&r.url_source, &urlsource::suggested_name(&url));
                    let spec = UrlSourceSpec { url, sha256: None };
                    r.url_source.insert(name, spec);
                }
            } else if !r.git_source.values().any(|s| s.url == url) {
                notes.push(format!(
                    "{from}.script: {script} clones {url} at build time, which a build \
                     refuses unless a [git-source] pins it (with the branch, tag or commit \
                     the script checks out)"
                ));
            }
        }
    }
    notes
}

/// `name`, or `name-2`, `name-3`… when `taken` has it.
fn free_name<V>(taken: &BTreeMap<String, V>, name: &str) -> String {
    (1..)
        .map(|i| match i {
            1 => name.to_owned(),
            i => format!("{name}-{i}"),
        })
        .find(|n| !taken.contains_key(n))
        .expect("some name is free")
}

/// A URL of a Debian archive (`…/debian`, `…/debian/…`, `…/debian-ports…`): an apt source.
fn is_debian_archive(url: &str) -> bool {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let first = path.split('/').next().unwrap_or_default();
    matches!(first, "debian" | "debian-ports" | "debian-security")
}

/// Package names of `release` as this machine's apt knows them, when the machine runs that
/// release (`apt-cache pkgnames`).
fn packages_of(release: &str) -> Option<BTreeSet<String>> {
    let os = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?
        .trim_matches('"');
    if codename != release {
        return None;
    }
    let out = std::process::Command::new("apt-cache")
        .arg("pkgnames")
        .output()
        .ok()?;
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.success() && !names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_archives_are_told_from_other_downloads() {
        assert!(is_debian_archive("http://mirror.example/debian"));
        assert!(is_debian_archive("https://mirror.example/debian-ports/"));
        assert!(is_debian_archive(
            "http://mirror.example/debian/pool/main/x.deb"
        ));
        assert!(!is_debian_archive("https://github.com/kernelci/bootrr.git"));
        assert!(!is_debian_archive("https://h.example/debianutils.tar.gz"));
    }

    #[test]
    fn a_file_in_a_git_tree_is_named_with_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("rootfs-configs.yaml");
        std::fs::write(&loose, "rootfs_configs: {}\n").unwrap();
        assert_eq!(source_of(&loose), "rootfs-configs.yaml");

        let repo = git2::Repository::init(dir.path().join("core")).unwrap();
        repo.remote("origin", "https://git.example/kernelci-core.git")
            .unwrap();
        let file = dir.path().join("core/config/core/rootfs-configs.yaml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "rootfs_configs: {}\n").unwrap();
        let mut index = repo.index().unwrap();
        index
            .add_path(std::path::Path::new("config/core/rootfs-configs.yaml"))
            .unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::new("t", "t@example.org", &git2::Time::new(0, 0)).unwrap();
        let id = repo
            .commit(Some("HEAD"), &sig, &sig, "c", &tree, &[])
            .unwrap()
            .to_string();
        assert_eq!(
            source_of(&file),
            format!(
                "config/core/rootfs-configs.yaml of https://git.example/kernelci-core.git commit {}",
                &id[..12]
            )
        );
        std::fs::write(&file, "rootfs_configs: {x: {}}\n").unwrap();
        assert!(
            source_of(&file).ends_with(", modified"),
            "{}",
            source_of(&file)
        );
    }
}
