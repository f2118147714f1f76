//! Command-line interface: what users type, and the help that teaches it.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::core::apt::SuiteId;
use crate::core::names::TargetName;
use crate::printer::ColorChoice;

#[derive(Debug, Parser)]
#[command(
    name = "kci-build",
    version,
    about = "Reproducible, content-addressed builds of KernelCI's toolchain images and rootfs files",
    long_about = "kci-build builds KernelCI's kernel toolchain images from pinned recipes in images/.\n\
Every target's cache key hashes all its inputs (recipe, build context, build args, platform,\n\
SOURCE_DATE_EPOCH, the parent's output digest), so unchanged targets are never rebuilt and\n\
the same inputs give the same bytes. Results live in a local OCI store; lockfiles/images.lock\n\
records keys, inputs, installed Debian packages and output digests for review.\n\n\
`kci-build rootfs` builds KernelCI's Debian rootfs files (recipes/) the same way, uploads them\n\
and records them in lockfiles/rootfs.lock; `kci-build deploy` points test-configs.yaml at them.",
    after_help = "Examples:\n  kci-build plan                       what would be built, and why not\n  kci-build build --jobs 2             build everything missing, update the lockfile\n  kci-build build gcc-12:arm64 -v      one target (and its parents), streaming logs\n  kci-build why gcc-12:arm64           which inputs changed since the lockfile\n  kci-build build --locked             CI: fail if the lockfile would change\n  kci-build check gcc-12:x86           rebuild from scratch, explain any difference\n  kci-build build --push --registry R  build, then publish to registry R\n  kci-build rootfs --storage DIR       build every rootfs config x arch, upload, lock\n  kci-build deploy --test-configs F    point test-configs.yaml at the locked versions\n\nExit codes: 0 success, 1 bad input or failed build, 2 environment (Docker, mmdebstrap, disk)."
)]
pub struct Cli {
    /// More output: -v streams build logs and traces, -vv adds debug traces.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to colour stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: ColorChoice,
    /// The recipe tree: `config.toml` and one directory per image.
    #[arg(
        long,
        global = true,
        env = "KCI_BUILD_IMAGES",
        default_value = "images"
    )]
    pub images: PathBuf,
    /// The lockfile to read and write.
    #[arg(
        long,
        global = true,
        env = "KCI_BUILD_LOCKFILE",
        default_value = "lockfiles/images.lock"
    )]
    pub lockfile: PathBuf,
    /// The content-addressed store [default: <user cache dir>/kci-build/store].
    #[arg(long, global = true, env = "KCI_BUILD_STORE")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Re-hash every blob and stored rootfs file (in parallel) and check that every key
    /// record and image manifest references whole, intact blobs; report what is wrong.
    Verify {
        /// Evict what is wrong (under the store's exclusive lock): the next build remakes it.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the build graph with each target's key and status; changes nothing.
    #[command(
        after_help = "Examples:\n  kci-build plan\n  kci-build plan --engines 4            # the images a build would build, on 4 engines\n  kci-build plan --engines 16 --rootfs  # a Friday's whole rootfs matrix on 16\n\nDurations are the last ones the store recorded of each build; a job never built here is\nestimated (the mean of its kind) and marked ~."
    )]
    Plan {
        /// Targets to plan (with their parents); all when none are given.
        targets: Vec<TargetName>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Print the schedule a build would run on N engines: makespan, critical path,
        /// speed-up over one engine, and what each engine runs when.
        #[arg(long, value_name = "N")]
        engines: Option<usize>,
        /// With --engines: schedule every target, as on an empty store.
        #[arg(long, requires = "engines")]
        cold: bool,
        /// With --engines: schedule the rootfs matrix (every config and arch of the recipes
        /// in DIR, after the builder image) instead of the images.
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "recipes", requires = "engines")]
        rootfs: Option<PathBuf>,
    },
    /// Explain whether a target, or a rootfs CONFIG/ARCH, is cached and which inputs changed
    /// since the lockfile. Builds nothing.
    #[command(
        after_help = "Examples:\n  kci-build why gcc-10:x86-kselftest\n  kci-build why bookworm-rt/amd64     # a rootfs: recipes/bookworm-rt.toml, arch amd64"
    )]
    Why {
        /// An image target (`gcc-10:x86`) or a rootfs `CONFIG/ARCH` (`bookworm/arm64`).
        target: String,
        /// The rootfs recipes directory (for CONFIG/ARCH).
        #[arg(long, default_value = "recipes")]
        recipes: PathBuf,
        /// The rootfs lockfile (for CONFIG/ARCH).
        #[arg(long, default_value = "lockfiles/rootfs.lock")]
        rootfs_lockfile: PathBuf,
    },
    /// Build missing targets in dependency order and update the lockfile.
    Build {
        /// Targets to build (with their parents); all when none are given.
        targets: Vec<TargetName>,
        /// How many targets to build at once (on each engine of --engines).
        #[arg(short, long, default_value_t = 2)]
        jobs: usize,
        /// Refuse to change the lockfile: any difference is an error that says what changed.
        #[arg(long)]
        locked: bool,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// An OCI registry (`host[:port]`, or an `http://`/`https://` URL) to look targets up
        /// in by key before building them, and to push to with --push.
        #[arg(long, env = "KCI_REGISTRY")]
        registry: Option<String>,
        /// Push every selected target after building it.
        #[arg(long, requires = "registry")]
        push: bool,
        /// Build on these engines, --jobs at once on each: Docker context names (`docker
        /// context create arm-box --docker host=unix:///run/arm.sock`), `default` (the engine
        /// DOCKER_HOST names) or addresses (`unix://…`, `tcp://…`). A target goes to an engine
        /// of its platform when one is named (an arm64 target to an arm64 engine), else to any;
        /// parents reach each engine from the store; an engine that stops answering has its
        /// builds moved to the others.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "default",
            env = "KCI_ENGINES"
        )]
        engines: Vec<String>,
    },
    /// What changed between two lockfiles (files or git revisions): targets, digests, inputs
    /// and Debian packages (added, removed, upgraded, downgraded).
    ///
    /// `kci-build diff HEAD~1 HEAD` compares every lockfile of the tree (the images and the
    /// rootfs one) at two commits, each under its name; `REV:PATH` or a file path compares
    /// just that lockfile. For `git diff` to
    /// show this summary, add `lockfiles/*.lock diff=kci` to .gitattributes and run
    /// `git config diff.kci.command "kci-build diff"` (or, for a line-oriented view,
    /// `git config diff.kci.textconv "kci-build diff"`).
    Diff {
        /// OLD NEW; or one FILE (textconv); or git's seven external-diff arguments.
        #[arg(num_args = 1..=7, required = true)]
        args: Vec<String>,
        /// `markdown` gives a PR comment.
        #[arg(long, value_enum, default_value = "text")]
        format: crate::ops::diff::Format,
    },
    /// Build KernelCI's Debian rootfs files for every (config, arch) of recipes/*.toml whose
    /// key is not stored yet, upload them and update lockfiles/rootfs.lock.
    ///
    /// Each (config, arch) runs mmdebstrap in a detached container of the `rootfs-builder`
    /// image (built first, like any target). Outputs: rootfs.cpio.gz, full.rootfs.tar.xz,
    /// full.rootfs.cpio.gz, initrd.cpio.gz, rootfs.ext4.xz and manifest.json, bit-for-bit
    /// reproducible. Files live in `<store>/rootfs/<key>/` and are uploaded to
    /// `<config>/<version>/<arch>/<file>`, where the version is derived from the keys of every
    /// arch of the config: nothing changed, same URLs.
    ///
    /// Ctrl-C or a kill leaves the containers running; a rerun (or --resume) re-attaches to
    /// them, collects finished ones and starts only what is missing.
    #[command(
        after_help = "Examples:\n  kci-build rootfs bookworm-kselftest --arch amd64\n  kci-build rootfs --storage /srv/www/rootfs --public-url http://files.lab/rootfs\n  KCI_STORAGE_TOKEN=... kci-build rootfs --storage https://api.example/ --public-url https://storage.example/images/rootfs/debian\n  kci-build rootfs --resume          after Ctrl-C: wait for the running builds, collect them\n  kci-build rootfs --locked          CI: fail if lockfiles/rootfs.lock would change"
    )]
    Rootfs {
        /// Configs to build (recipes/<config>.toml); all when none are given.
        configs: Vec<String>,
        /// Only these Debian arches (repeatable); default: each config's arch-list.
        #[arg(long = "arch")]
        arches: Vec<String>,
        /// The rootfs recipes directory. A recipe that pins kernelci-core
        /// (`[git-source.kernelci-core]`) takes its scripts and overlays from that commit's
        /// config/rootfs/debos/; one that does not, from scripts/ and overlays/ here.
        #[arg(long, default_value = "recipes")]
        recipes: PathBuf,
        /// The rootfs lockfile to read and write.
        #[arg(long, default_value = "lockfiles/rootfs.lock")]
        rootfs_lockfile: PathBuf,
        /// Development: take kernelci-core's scripts and overlays from this checkout instead
        /// of the pinned commit. Its files become the key facts; nothing is uploaded and the
        /// lockfile is left as it is.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["locked", "storage"])]
        kernelci_core: Option<PathBuf>,
        /// How many (config, arch) builds run at once.
        #[arg(short, long, default_value_t = 2)]
        jobs: usize,
        /// Fail if the rootfs lockfile (or the images lockfile, for the builder) would change.
        #[arg(long)]
        locked: bool,
        /// Pick up the builds of an interrupted run (any rerun does this too).
        #[arg(long)]
        resume: bool,
        /// Upload to a directory, or to KernelCI's storage API at this URL (token in
        /// $KCI_STORAGE_TOKEN).
        #[arg(long, env = "KCI_STORAGE")]
        storage: Option<String>,
        /// Where uploaded files are served: `<public-url>/<config>/<version>/<arch>/<file>`.
        #[arg(long, env = "KCI_STORAGE_PUBLIC_URL")]
        public_url: Option<String>,
        /// The storage API's path prefix [default: images/rootfs/debian].
        #[arg(long)]
        storage_prefix: Option<String>,
        /// The OCI registry (`host[:port]` or URL) every machine shares results through, the
        /// Nix substituter way: each (config, arch) is looked up there by key before it is
        /// built (`pulled`, every file checked against its sha256) and pushed when missing,
        /// as an OCI artifact `<prefix>rootfs-<config>:<arch>-<key>`; the builder image too.
        #[arg(long, env = "KCI_REGISTRY")]
        registry: Option<String>,
        /// Build every (config, arch) as a job of the Docker daemon's swarm (it must be a
        /// manager: `docker swarm init`; other machines `docker swarm join`). Each job
        /// builds and packs on its node in the builder image plus this kci-build, pushes its
        /// files to --registry, and the files are checked here before they are stored.
        /// Jobs run on nodes of this machine's platform (foreign arches emulated). The
        /// registry credentials reach the jobs as a Swarm secret. A rerun attaches to the
        /// jobs an interrupted run left. --jobs does not apply: Swarm places by CPU.
        #[arg(long, requires = "registry", conflicts_with = "kernelci_core")]
        swarm: bool,
        /// Memory, in MiB, the xz encoders of a run may take at once: each encoder gets
        /// as many threads as fit (165 MiB each at preset 6, 80 at preset 1, by liblzma's
        /// account) and free cores allow, and waits while none fits. The default keeps a
        /// run under 300 MB; 340 lets two preset-6 threads run (faster on an idle machine,
        /// up to ~400 MB). The bytes do not depend on it.
        #[arg(
            long,
            env = "KCI_BUILD_XZ_MEMORY",
            default_value_t = kci_build_default_xz_mib(),
            value_name = "MIB"
        )]
        xz_memory: u64,
        /// A download from a build container that yields no byte for this many seconds is
        /// abandoned and tried again (a slow one that keeps moving is never cut).
        #[arg(
            long,
            env = "KCI_BUILD_STALL_TIMEOUT",
            default_value_t = 120,
            value_name = "SECS"
        )]
        stall_timeout: u64,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Convert KernelCI configuration into kci-build recipes.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Load stored images into the local Docker daemon as `{prefix}{image}:{tag}`.
    Load {
        /// Targets to load; all when none are given.
        targets: Vec<TargetName>,
    },
    /// Push stored images to a registry: blobs it lacks, manifests, then the tags
    /// `{prefix}{image}:{tag}` and the immutable `{prefix}{image}:kci-<key>`.
    ///
    /// Credentials: $KCI_REGISTRY_USER/$KCI_REGISTRY_PASSWORD, else Docker's config.json.
    Push {
        /// Targets to push (with their parents); all when none are given.
        targets: Vec<TargetName>,
        /// The registry: `host[:port]` (plain http for loopback hosts) or a URL.
        #[arg(long, env = "KCI_REGISTRY")]
        registry: String,
        /// Blobs uploaded at once.
        #[arg(short, long, default_value_t = 4)]
        jobs: usize,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild from scratch into a throw-away store and compare with the lockfile; on a
    /// mismatch, name the layer, the path and what differs. Exit 1 when anything differs.
    Check {
        /// Targets to check (with their parents); all when none are given.
        targets: Vec<TargetName>,
        /// How many targets to build at once.
        #[arg(short, long, default_value_t = 2)]
        jobs: usize,
        /// Fetch locked layers missing from the local store from this registry, to compare.
        #[arg(long, env = "KCI_REGISTRY")]
        registry: Option<String>,
    },
    /// Point the `file_systems` entries of KernelCI's test-configs.yaml at the version
    /// directories of the rootfs lockfile, once every new file is served.
    ///
    /// An entry is touched when its `type` is `debian` and its paths look like
    /// `<config>/<version>/{arch}/<file>` with `<config>` in the lockfile: each such path gets
    /// the lockfile's version, file name kept. Only those strings change; comments, anchors,
    /// merge keys and quoting stay byte for byte, and the result is re-parsed to prove it.
    /// Before writing, every new URL (`<type url or --storage-url>/<path>` for each arch of
    /// the config) must answer HTTP HEAD 200; an entry with a missing file keeps its old
    /// version, the others are written, and the command exits 1.
    ///
    /// --lockfile defaults to lockfiles/rootfs.lock here.
    #[command(
        after_help = "Examples:\n  kci-build deploy --test-configs ../kernelci-core/config/core/test-configs.yaml\n  kci-build deploy --test-configs test-configs.yaml --check      CI: exit 1 if not up to date\n  kci-build deploy --test-configs rootfs-images.yaml --format rootfs-images \\\n      --storage-url https://storage.example.org/images/rootfs/debian --json"
    )]
    Deploy {
        /// The file to update: test-configs.yaml, or rootfs-images.yaml with --format.
        #[arg(long, value_name = "PATH")]
        test_configs: PathBuf,
        /// Write nothing; exit 1 (saying what would change) when the file is not up to date.
        #[arg(long)]
        check: bool,
        /// `rootfs-images` is KernelCI's later generated file_systems file.
        #[arg(long, value_enum, default_value = "test-configs")]
        format: crate::core::deploy::Format,
        /// Base URL of the Debian rootfs storage, replacing the `debian` type's `url`
        /// (required with --format rootfs-images, which does not carry it).
        #[arg(long, value_name = "URL")]
        storage_url: Option<String>,
        /// Print a JSON report on stdout: per entry name, config, old, new, status
        /// (updated, unchanged, missing) and missing_urls.
        #[arg(long)]
        json: bool,
    },
    /// Check the lockfile against the recipes (for CI), or move its apt index pins.
    ///
    /// Every Debian suite the recipes install from is pinned in the lockfile by the sha256
    /// of its `InRelease` (`[apt-index."debian/bookworm"]`); every build is served from that
    /// snapshot through kci-build's apt cache, so nothing moves when the mirror does.
    /// `--refresh` (the `cargo update` of kci-build) pins today's index: the keys of every
    /// target change, and the next build installs today's packages.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["check", "refresh"]))]
    Lock {
        /// Exit 1 when the lockfile does not match the recipes.
        #[arg(long)]
        check: bool,
        /// Pin today's index of these suites (`debian/bookworm`) in the images and rootfs
        /// lockfiles; all the recipes install from when none are given, and then also
        /// today's commit of every git source of the rootfs recipes.
        #[arg(long, num_args = 0.., value_name = "SUITE")]
        refresh: Option<Vec<SuiteId>>,
        /// The rootfs recipes directory (for --refresh).
        #[arg(long, default_value = "recipes")]
        recipes: PathBuf,
        /// The rootfs lockfile (for --refresh; skipped when it does not exist).
        #[arg(long, default_value = "lockfiles/rootfs.lock")]
        rootfs_lockfile: PathBuf,
        /// Print a JSON report on stdout (the problems found, or each pin before and after).
        #[arg(long)]
        json: bool,
    },
    /// Sweep the store: remove every blob, key record, rootfs directory and log that no
    /// lockfile references (in the working tree or at the last N commits that changed it),
    /// what killed runs left, and the store's failed builder containers. Builds wait for it.
    #[command(
        after_help = "Roots: lockfiles/images.lock (--lockfile) and lockfiles/rootfs.lock (--rootfs-lockfile), each as on disk and at the last --keep-revisions commits that changed it; with them, the images of their keys, the pinned apt indexes and every .deb they name.\n\n  kci-build gc --dry-run      what would go, and how much space\n  kci-build gc                sweep (under the store's exclusive lock)"
    )]
    Gc {
        /// Commits that changed a lockfile whose references stay, besides its working tree.
        #[arg(long, default_value_t = 4)]
        keep_revisions: usize,
        /// Say what would go and how much space it takes; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// The rootfs lockfile (skipped when it does not exist).
        #[arg(long, default_value = "lockfiles/rootfs.lock")]
        rootfs_lockfile: PathBuf,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The store's health: re-hash every blob and rootfs file, check every key record and
    /// image manifest's references.
    #[command(
        after_help = "Exit codes: 0 the store is sound (or --repair evicted what was not), 1 problems found, 2 the store cannot be read."
    )]
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// One (config, arch) of `rootfs --swarm`, as its Swarm task runs it on a node.
    #[command(hide = true)]
    RootfsTask(RootfsTaskArgs),
    /// The apt proxy of rootfs builds, as its own process: started and leased by `kci-build
    /// rootfs` so that the builder containers keep their apt when kci-build is killed.
    /// Prints its address; exits once no lease holder lives and no rootfs container of
    /// the store runs.
    #[command(hide = true)]
    AptProxy {
        /// The pid of the kci-build that holds the first lease.
        #[arg(long)]
        lease: u32,
        /// `SUITE=DIGEST`: a pinned `InRelease` to serve.
        #[arg(long = "pin")]
        pins: Vec<String>,
        /// `SHA256=URL`: a pinned download to serve.
        #[arg(long = "download")]
        downloads: Vec<String>,
        /// The address to listen on when it is free (a resumed container still names it).
        #[arg(long)]
        prefer: Option<std::net::SocketAddr>,
    },
    /// Fill the apt cache for the lockfile without building: the pinned indexes and every
    /// `.deb` the targets were built from, verified. A later build then needs no mirror
    /// (`KCI_APT_UPSTREAM=http://127.0.0.1:1` proves it).
    Fetch {
        /// Targets whose packages to fetch (with their parents); all when none are given.
        targets: Vec<TargetName>,
        /// Pull the cache from this registry first (an OCI artifact `{prefix}apt-cache:apt-…`
        /// named by the lockfile's pins and packages); fetch only what it lacks.
        #[arg(long, env = "KCI_REGISTRY")]
        registry: Option<String>,
        /// Push the cache to --registry afterwards (blobs it lacks, then the artifact).
        #[arg(long, requires = "registry")]
        push: bool,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The Monday production update of KernelCI, as one resumable, journalled plan:
    /// pause → restart → update (core, dsl, backend, frontend, website, test-definitions,
    /// docker, kernel) → trigger → verify.
    ///
    /// The site (Jenkins, the repositories, ansible, the web root…) is described by
    /// `production.toml` (see production.example.toml); secrets come from the variables or
    /// files it names. Every step's start, end and facts (tags, commits, build numbers) go to
    /// a journal under the site's state directory; a rerun resumes after the last finished
    /// step, and a failed or interrupted step starts again from its beginning.
    #[command(
        after_help = "The Monday, command by command:\n  kci-build prod run --dry-run     what would be done, call by call\n  kci-build prod pause             stop new revisions, drain the pipeline (about 1 h)\n  kci-build prod restart           restart Jenkins, wait for the new instance\n  kci-build prod update            the nine update steps, ending with the pipe cleaner's trigger\n  kci-build prod verify --wait     judge the pipe cleaner against the previous revisions\n  kci-build prod status            the journal, step by step\n\n`kci-build prod run` does all of it in order, and resumes where it stopped when run again.\n\nExit codes: 0 done, 1 bad input (site file, a step's git or job failure), 2 environment (Jenkins, a remote, a command unreachable or failing), 3 not settled (verify), 130 interrupted (rerun to resume)."
    )]
    Prod {
        /// The site file [default: ./production.toml].
        #[arg(long, global = true)]
        site: Option<PathBuf>,
        /// Print every HTTP call, git push and command the steps would make; do none.
        #[arg(long, global = true)]
        dry_run: bool,
        /// The run's date for new runs (`YYYYMMDD`, names the tags) [default: today, UTC].
        #[arg(long, global = true)]
        date: Option<String>,
        /// Print the journal's summary as JSON on stdout.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: crate::ops::prod::ProdAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportWhat {
    /// KernelCI's rootfs-configs.yaml (anchors and merge keys included) → recipes/*.toml.
    /// Anything that cannot be carried over is named (config and field) on stderr and in
    /// the recipe's header.
    RootfsConfigs {
        file: PathBuf,
        /// Where to write the recipes.
        #[arg(long, default_value = "recipes")]
        out: PathBuf,
        /// Port every config to this Debian release (`bullseye-ltp` → `bookworm-ltp`); with
        /// the machine's apt lists for it, package names are checked too.
        #[arg(long)]
        release: Option<String>,
        /// The recipes' SOURCE_DATE_EPOCH [default: images/config.toml's].
        #[arg(long)]
        source_date_epoch: Option<u64>,
        /// The kernelci-core whose `config/rootfs/debos/` the configs' `script:` and
        /// `test_overlay:` name; every recipe pins it as `[git-source.kernelci-core]`.
        #[arg(long, default_value = "https://github.com/kernelci/kernelci-core.git")]
        kernelci_core_url: String,
        /// The branch or tag of kernelci-core that `lock --refresh` follows.
        #[arg(long, default_value = "main")]
        kernelci_core_ref: String,
    },
}

/// `--xz-memory`'s default, in MiB.
const fn kci_build_default_xz_mib() -> u64 {
    crate::rootfs::pack::DEFAULT_XZ_MEMORY >> 20
}

/// What a Swarm task of `rootfs --swarm` is told (by the coordinator, never by hand): build
/// one (config, arch) here, pack it, push it to the registry under a candidate tag.
#[derive(Debug, clap::Args)]
pub struct RootfsTaskArgs {
    #[arg(long)]
    pub registry: String,
    /// The rootfs artifact's repository.
    #[arg(long)]
    pub repo: String,
    /// The candidate tag to push the files under.
    #[arg(long)]
    pub tag: String,
    /// The repository holding the inputs blob.
    #[arg(long)]
    pub inputs_repo: String,
    /// The inputs tar's digest.
    #[arg(long)]
    pub inputs: crate::core::names::Digest,
    #[arg(long)]
    pub config: String,
    #[arg(long)]
    pub arch: String,
    #[arg(long)]
    pub key: crate::core::names::Digest,
    #[arg(long)]
    pub source_date_epoch: u64,
    #[arg(long)]
    pub xz_preset: u32,
    /// MiB the xz encoders may take at once.
    #[arg(long)]
    pub xz_memory: u64,
}
