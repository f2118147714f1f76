//! The files a rootfs build sends into its builder container under `/kci/`: kci-build's
//! build script, the recipe's `script`, the steps every rootfs runs (`scripts/…`, as
//! KernelCI's debos recipe names them) and the overlays. They come from a [`Tree`]: the
//! pinned kernelci-core's `config/rootfs/debos/` (its pin is the key fact), or a directory
//! (the recipes directory, or a kernelci-core checkout for development), whose files are
//! each a key fact. Scanned once and packed into one deterministic tar for the Docker API's
//! archive upload.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::plan::{InputFile, BASE_OVERLAYS, BUILD_SCRIPT, STEP_SCRIPTS};
use super::RootfsRecipe;
use crate::core::names::Digest;

/// Where a recipe's scripts and overlays are read from.
#[derive(Debug, Clone, Copy)]
pub enum Tree<'a> {
    /// A directory laid out like kernelci-core's `config/rootfs/debos/` (`scripts/`,
    /// `overlays/`): every file is a key fact.
    Dir(&'a Path),
    /// The pinned kernelci-core's `config/rootfs/debos/`, exported from the store into this
    /// directory: the pin (commit and tree) is the key fact, not its files.
    Pinned(&'a Path),
}

impl Tree<'_> {
    fn dir(&self) -> &Path {
        match self {
            Tree::Dir(d) | Tree::Pinned(d) => d,
        }
    }

    fn is_pinned(&self) -> bool {
        matches!(self, Tree::Pinned(_))
    }

    /// How a missing file's place is named: the directory, or the pinned source.
    fn describe(&self, rel: &str) -> String {
        match self {
            Tree::Dir(d) => d.join(rel).display().to_string(),
            Tree::Pinned(_) => format!(
                "{rel} of the pinned kernelci-core ({}/{rel})",
                crate::core::rootfs_recipe::KERNELCI_CORE_DEBOS_DIR
            ),
        }
    }
}

/// The scanned inputs of one recipe, with where each file comes from.
#[derive(Debug, Clone)]
pub struct RecipeInputs {
    pub files: Vec<(InputFile, Option<PathBuf>)>,
    /// The files came from a pinned tree: only `build.sh` is a key fact of its own.
    pub pinned: bool,
}

impl RecipeInputs {
    pub fn key_files(&self) -> Vec<InputFile> {
        self.files
            .iter()
            .filter(|(f, _)| !self.pinned || f.path == "build.sh")
            .map(|(f, _)| f.clone())
            .collect()
    }

    /// What a recipe on a pinned tree has as key files without reading the tree (for
    /// `why`, where the pin stands for them).
    pub fn pinned_key_files() -> Vec<InputFile> {
        vec![build_script()]
    }
}

/// Scans `recipe`'s files in `tree`; a missing file names the recipe file and the field.
pub fn scan(
    recipes_dir: &Path,
    tree: Tree<'_>,
    recipe: &RootfsRecipe,
) -> anyhow::Result<RecipeInputs> {
    let recipe_file = recipes_dir.join(format!("{}.toml", recipe.name));
    let base = tree.dir();
    let mut files = Vec::new();
    if let Some(script) = &recipe.script {
        let path = base.join(script);
        stays_inside(base, &path, &recipe_file, "script")?;
        if !path.is_file() {
            bail!(
                "{}: script: {} does not exist",
                recipe_file.display(),
                tree.describe(script)
            );
        }
        files.push((file_entry("script", &path, Some(0o755))?, Some(path)));
    }
    files.push((
        InputFile {
            path: "scripts".to_owned(),
            sha256: Digest::of(b""),
            mode: 0o755,
            is_dir: true,
        },
        None,
    ));
    for step in STEP_SCRIPTS {
        let rel = format!("scripts/{step}");
        let path = base.join(&rel);
        stays_inside(base, &path, &recipe_file, "script")?;
        if !path.is_file() {
            bail!(
                "{}: {} does not exist: every rootfs runs it (KernelCI's \
                 {}/{rel}); pin kernelci-core with [git-source.{}]",
                recipe_file.display(),
                tree.describe(&rel),
                crate::core::rootfs_recipe::KERNELCI_CORE_DEBOS_DIR,
                crate::core::rootfs_recipe::KERNELCI_CORE
            );
        }
        files.push((file_entry(&rel, &path, Some(0o755))?, Some(path)));
    }
    let mut overlays: Vec<(String, PathBuf)> = BASE_OVERLAYS
        .iter()
        .map(|o| (o.to_string(), base.join("overlays").join(o)))
        .filter(|(_, p)| p.is_dir())
        .collect();
    if let Some(o) = &recipe.test_overlay {
        let path = base.join(o);
        stays_inside(base, &path, &recipe_file, "test-overlay")?;
        if !path.is_dir() {
            bail!(
                "{}: test-overlay: {} is not a directory",
                recipe_file.display(),
                tree.describe(o)
            );
        }
        overlays.push(("test".to_owned(), path));
    }
    for (name, dir) in overlays {
        let mut entries: Vec<walkdir::DirEntry> = walkdir::WalkDir::new(&dir)
            .follow_links(false)
            .into_iter()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading overlay {}", dir.display()))?;
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        for e in entries {
            let rel = e.path().strip_prefix(&dir).expect("under the overlay");
            let rel = rel
                .to_str()
                .with_context(|| format!("{}: not UTF-8", e.path().display()))?;
            let path = if rel.is_empty() {
                format!("overlays/{name}")
            } else {
                format!("overlays/{name}/{rel}")
            };
            let ft = e.file_type();
            if ft.is_dir() {
                files.push((
                    InputFile {
                        path,
                        sha256: Digest::of(b""),
                        mode: 0o755,
                        is_dir: true,
                    },
                    None,
                ));
            } else if ft.is_file() {
                files.push((
                    file_entry(&path, e.path(), None)?,
                    Some(e.path().to_owned()),
                ));
            } else {
                bail!(
                    "{}: only files and directories are supported in overlays",
                    e.path().display()
                );
            }
        }
    }
    files.push((build_script(), None));
    files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(RecipeInputs {
        files,
        pinned: tree.is_pinned(),
    })
}

fn build_script() -> InputFile {
    InputFile {
        path: "build.sh".to_owned(),
        sha256: Digest::of(BUILD_SCRIPT.as_bytes()),
        mode: 0o755,
        is_dir: false,
    }
}

/// A recipe's path must resolve inside its tree: a symlink in it that leads elsewhere would
/// make a file of the machine an input of the build.
fn stays_inside(
    recipes_dir: &Path,
    path: &Path,
    recipe_file: &Path,
    field: &str,
) -> anyhow::Result<()> {
    let (Ok(root), Ok(real)) = (recipes_dir.canonicalize(), path.canonicalize()) else {
        return Ok(()); // a missing file is named by the caller
    };
    if !real.starts_with(&root) {
        bail!(
            "{}: {field}: {} resolves to {}, outside the recipes directory {}",
            recipe_file.display(),
            path.display(),
            real.display(),
            root.display()
        );
    }
    Ok(())
}

fn file_entry(path: &str, source: &Path, mode: Option<u32>) -> anyhow::Result<InputFile> {
    let bytes = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    let mode = mode.unwrap_or_else(|| {
        use std::os::unix::fs::PermissionsExt as _;
        let m = std::fs::metadata(source)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if m & 0o111 != 0 {
            0o755
        } else {
            0o644
        }
    });
    Ok(InputFile {
        path: path.to_owned(),
        sha256: Digest::of(&bytes),
        mode,
        is_dir: false,
    })
}

/// The `/kci/` tree as a tar: sorted, owned by root, mtime = SOURCE_DATE_EPOCH. Each file is
/// re-hashed as it is packed, so a file changed since the scan is an error, not a wrong key.
pub fn pack(inputs: &RecipeInputs, sde: u64) -> anyhow::Result<Vec<u8>> {
    pack_with(inputs, sde, None)
}

/// [`pack`], plus the tree `git` (the served copies of the recipe's git sources and their
/// git configuration, made for this run) under `kci/git/`. Those bytes are not key facts:
/// the pins they are made from are.
pub fn pack_with(inputs: &RecipeInputs, sde: u64, git: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(sde);
    dir.set_size(0);
    b.append_data(&mut dir.clone(), "kci/", std::io::empty())?;
    for (f, source) in &inputs.files {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(sde);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(f.mode);
        let name = format!("kci/{}", f.path);
        if f.is_dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            continue;
        }
        let bytes = match source {
            Some(p) => {
                let mut v = Vec::new();
                std::fs::File::open(p)
                    .and_then(|mut f| f.read_to_end(&mut v))
                    .with_context(|| format!("reading {}", p.display()))?;
                v
            }
            None => BUILD_SCRIPT.as_bytes().to_vec(),
        };
        if Digest::of(&bytes) != f.sha256 {
            bail!("{} changed while kci-build was running", f.path);
        }
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, name, bytes.as_slice())?;
    }
    if let Some(dir) = git {
        for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let rel = e.path().strip_prefix(dir).expect("under the walked dir");
            let name = format!("kci/git/{}", rel.display());
            let mut h = tar::Header::new_ustar();
            h.set_mtime(sde);
            h.set_uid(0);
            h.set_gid(0);
            if e.file_type().is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(
                    &mut h,
                    format!("{}/", name.trim_end_matches('/')),
                    std::io::empty(),
                )?;
            } else {
                let bytes = std::fs::read(e.path())
                    .with_context(|| format!("reading {}", e.path().display()))?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, name, bytes.as_slice())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> RootfsRecipe {
        RootfsRecipe {
            name: "tiny".into(),
            debian_release: "bookworm".into(),
            arch_list: vec!["amd64".into()],
            extra_packages: vec![],
            extra_packages_remove: vec![],
            extra_files_remove: vec![],
            script: Some("scripts/hello.sh".into()),
            test_overlay: Some("overlays/tiny".into()),
            crush_image_options: vec![],
            source_date_epoch: 1,
            mirror: "auto".into(),
            xz_preset: None,
            imagesize: None,
            debos_memory: None,
            git_source: Default::default(),
            url_source: Default::default(),
        }
    }

    #[test]
    fn scan_names_missing_files_and_packs_deterministically() {
        let d = tempfile::tempdir().unwrap();
        let tree = Tree::Dir(d.path());
        let e = scan(d.path(), tree, &recipe()).unwrap_err().to_string();
        assert!(e.contains("tiny.toml: script:"), "{e}");
        std::fs::create_dir_all(d.path().join("scripts")).unwrap();
        std::fs::write(d.path().join("scripts/hello.sh"), "echo hi\n").unwrap();
        let e = scan(d.path(), tree, &recipe()).unwrap_err().to_string();
        assert!(
            e.contains("scripts/setup-networking.sh does not exist: every rootfs runs it"),
            "{e}"
        );
        for step in STEP_SCRIPTS {
            std::fs::write(d.path().join("scripts").join(step), "true\n").unwrap();
        }
        let e = scan(d.path(), tree, &recipe()).unwrap_err().to_string();
        assert!(e.contains("test-overlay:"), "{e}");
        std::fs::create_dir_all(d.path().join("overlays/tiny/etc")).unwrap();
        std::fs::write(d.path().join("overlays/tiny/etc/motd"), "hi\n").unwrap();
        let inputs = scan(d.path(), tree, &recipe()).unwrap();
        let paths: Vec<&str> = inputs.files.iter().map(|f| f.0.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "build.sh",
                "overlays/test",
                "overlays/test/etc",
                "overlays/test/etc/motd",
                "script",
                "scripts",
                "scripts/create_initrd_ramdisk.sh",
                "scripts/crush.sh",
                "scripts/setup-networking.sh",
                "scripts/strip.sh",
            ]
        );
        assert_eq!(
            inputs.key_files().len(),
            paths.len(),
            "a directory: all facts"
        );
        let pinned = scan(d.path(), Tree::Pinned(d.path()), &recipe()).unwrap();
        assert_eq!(pinned.files.len(), paths.len(), "all sent");
        assert_eq!(
            pinned.key_files(),
            RecipeInputs::pinned_key_files(),
            "a pinned tree: its pin stands for its files"
        );
        let a = pack(&inputs, 7).unwrap();
        assert_eq!(a, pack(&inputs, 7).unwrap());
        std::fs::write(d.path().join("overlays/tiny/etc/motd"), "changed\n").unwrap();
        assert!(pack(&inputs, 7).is_err());
    }
}
