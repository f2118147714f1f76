//! A faithful HTTP test double of kernelci-backend's read API (PROCEDURE.md §3), traps
//! included: unknown filter keys are silently ignored (a client typo answers everything),
//! `count` in a list answer is capped by `limit`, `/count/build/` (trailing slash) is a 404,
//! `_id` is `{"$oid"}` and dates `{"$date": ms}`, a missing or bad token is the 403 envelope,
//! a `null` filter matches null or missing, `limit=0` means all, `skip`, `field=`/`nfield=`,
//! `sort`/`sort_order` (default descending), `gte=`/`lt=`, `aggregate=`, and `/version`
//! needs no token. 5xx answers and connections dropped mid-answer can be injected.
//!
//! It serves a history the test makes with [`RevisionSpec`]: by hand, or
//! [`RevisionSpec::healthy`] (B builds × T test cases over L labs, statuses from a seed) with
//! knobs — drop a lab, drop a share of the builds, set the test pass rate, results still
//! arriving ([`Arrival`]) — and [`RevisionSpec::expected`], the `Revision` a correct client
//! reads once everything has arrived.
//!
//! It runs on its own thread and runtime, so `#[tokio::test]`s and tests running the real
//! binary against [`BackendDouble::url`] can both use it. Every request is recorded.
#![allow(dead_code)]

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use kci_build::core::verdict::{BuildKey, Revision, TestKey};
use serde_json::{json, Map, Value};

pub const TOKEN: &str = "5c1f0e9a-7d3b-4e2a-9f61-kci-read-token";
pub const TOKEN_VAR: &str = "KCI_BACKEND_TOKEN";
pub const JOB: &str = "kernelci";
pub const BRANCH: &str = "kernelci.org";
pub const VERSION: &str = "2021.11.1";

/// One request as the double saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    pub status: u16,
    /// The connection was dropped mid-answer.
    pub dropped: bool,
}

impl Request {
    /// The decoded query pairs, in order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        query_pairs(self.query.as_deref().unwrap_or(""))
    }

    /// Every value of `key` in the query.
    pub fn values(&self, key: &str) -> Vec<String> {
        self.pairs()
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }
}

/// A failure served instead of the next answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status (502/503/504 as a proxy's HTML page, others as an error envelope).
    Status(u16),
    /// Headers of a 200, part of the body, then the connection is dropped.
    Drop,
}

/// How a revision's results arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Everything is there from the start.
    Complete,
    /// Still receiving results: each collection's documents are shown in `n` equal parts,
    /// one more each time the revision is read (its `/job` document is in an answer); all of
    /// them from the n-th read on.
    Reads(u32),
    /// Still receiving results: documents appear evenly over this long after the revision
    /// is added.
    Over(Duration),
}

/// A build to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub key: BuildKey,
    /// `PASS`, `FAIL`, `BUILD`, `UNKNOWN`.
    pub status: String,
    /// `None`: not parsed yet (the field is missing).
    pub warnings: Option<u64>,
}

/// A test case to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseSpec {
    pub key: TestKey,
    pub name: String,
    /// `PASS`, `FAIL`, `SKIP`, `ERROR`, `UNKNOWN`.
    pub status: String,
    /// A tracked regression (a `test_regression` document and the case's `regression_id`).
    pub regression: bool,
}

/// The size of a generated revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub builds: usize,
    /// Test cases, spread evenly over the test keys.
    pub cases: usize,
    /// Labs; each runs 3 plans on 2 device types.
    pub labs: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            builds: 60,
            cases: 1200,
            labs: 4,
        }
    }
}

/// A revision to serve: its `/job` document, builds, test groups (one per test key of its
/// cases, with a sub-group each), test cases and regressions.
#[derive(Debug, Clone)]
pub struct RevisionSpec {
    pub job: String,
    pub git_branch: String,
    pub kernel: String,
    pub commit: String,
    pub created_ms: u64,
    pub builds: Vec<BuildSpec>,
    pub cases: Vec<CaseSpec>,
    pub arrival: Arrival,
    /// Drives every choice the knobs make.
    pub seed: u64,
}

/// splitmix64: a tiny deterministic generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `0..n` in a seeded order.
    pub fn shuffled(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

/// 40 hex digits derived from `text`: a stand-in commit.
pub fn fake_commit(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = Rng::new(h);
    (0..3)
        .map(|_| format!("{:016x}", r.next_u64()))
        .collect::<String>()[..40]
        .to_owned()
}

const ARCHES: &[&str] = &["arm", "arm64", "i386", "mips", "riscv", "x86_64"];
const ENVS: &[&str] = &["gcc-10", "clang-13"];
const LABS: &[&str] = &[
    "lab-collabora",
    "lab-baylibre",
    "lab-broonie",
    "lab-cip",
    "lab-clabbe",
    "lab-linaro-lkft",
    "lab-kontron",
    "lab-theobroma-systems",
];
const DEVICES: &[&str] = &[
    "qemu_x86_64",
    "bcm2711-rpi-4-b",
    "hp-11A-G6-EE-grunt",
    "meson-g12b-odroid-n2",
    "rk3399-gru-kevin",
    "imx8mp-evk",
    "sun50i-h6-pine-h64",
    "beaglebone-black",
];
const PLANS: &[&str] = &["baseline", "kselftest-lkdtm", "ltp-ipc"];

/// The first `n` build keys every generated revision shares (arch × toolchain × defconfig).
pub fn build_keys(n: usize) -> Vec<BuildKey> {
    (0..n)
        .map(|i| {
            let per = ARCHES.len() * ENVS.len();
            let defconfig_full = match i / per {
                0 => "defconfig".to_owned(),
                1 => "allnoconfig".to_owned(),
                k => format!("defconfig+CONFIG_KCI_{k}=y"),
            };
            BuildKey {
                arch: ARCHES[i % ARCHES.len()].into(),
                defconfig_full,
                build_environment: ENVS[(i / ARCHES.len()) % ENVS.len()].into(),
            }
        })
        .collect()
}

/// The names of the first `n` labs.
pub fn lab_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match LABS.get(i) {
            Some(l) => (*l).to_owned(),
            None => format!("lab-{i}"),
        })
        .collect()
}

/// The test keys of `labs` labs: 3 plans on 2 device types each.
pub fn test_keys(labs: usize) -> Vec<TestKey> {
    let mut out = Vec::new();
    for (l, lab) in lab_names(labs).into_iter().enumerate() {
        for d in 0..2 {
            let n = l * 2 + d;
            let device = if n < DEVICES.len() {
                DEVICES[n].to_owned()
            } else {
                format!("{}-{}", DEVICES[n % DEVICES.len()], n / DEVICES.len())
            };
            for plan in PLANS {
                out.push(TestKey {
                    plan: (*plan).into(),
                    device_type: device.clone(),
                    lab_name: lab.clone(),
                });
            }
        }
    }
    out
}

impl RevisionSpec {
    /// An empty revision of [`JOB`]/[`BRANCH`].
    pub fn new(kernel: &str, created_ms: u64) -> RevisionSpec {
        RevisionSpec {
            job: JOB.into(),
            git_branch: BRANCH.into(),
            kernel: kernel.into(),
            commit: fake_commit(kernel),
            created_ms,
            builds: Vec::new(),
            cases: Vec::new(),
            arrival: Arrival::Complete,
            seed: 0,
        }
    }

    /// A healthy revision: `shape.builds` builds (about 3 % FAIL, 10 % PASS with warnings),
    /// `shape.cases` test cases over the test keys of `shape.labs` labs (about 90 % PASS, 5 %
    /// FAIL, 5 % SKIP, a fifth of the failures regressions). The keys are the same for every
    /// seed; the seed only moves the statuses.
    pub fn healthy(kernel: &str, created_ms: u64, seed: u64, shape: Shape) -> RevisionSpec {
        let mut rng = Rng::new(seed);
        let builds = build_keys(shape.builds)
            .into_iter()
            .map(|key| {
                let r = rng.unit();
                let (status, warnings) = if r < 0.03 {
                    ("FAIL", 0)
                } else if r < 0.13 {
                    ("PASS", 1 + rng.next_u64() % 5)
                } else {
                    ("PASS", 0)
                };
                BuildSpec {
                    key,
                    status: status.into(),
                    warnings: Some(warnings),
                }
            })
            .collect();
        let keys = test_keys(shape.labs);
        let cases = (0..shape.cases)
            .map(|j| {
                let key = keys[j % keys.len()].clone();
                let r = rng.unit();
                let status = if r < 0.90 {
                    "PASS"
                } else if r < 0.95 {
                    "FAIL"
                } else {
                    "SKIP"
                };
                let regression = status == "FAIL" && rng.unit() < 0.2;
                CaseSpec {
                    name: format!("{}.case-{}", key.plan, j / keys.len()),
                    key,
                    status: status.into(),
                    regression,
                }
            })
            .collect();
        RevisionSpec {
            builds,
            cases,
            seed,
            ..RevisionSpec::new(kernel, created_ms)
        }
    }

    /// On another job and branch.
    pub fn on(mut self, job: &str, git_branch: &str) -> RevisionSpec {
        self.job = job.into();
        self.git_branch = git_branch.into();
        self
    }

    /// A lab that did not report: its test groups and cases are gone.
    pub fn without_lab(mut self, lab: &str) -> RevisionSpec {
        self.cases.retain(|c| c.key.lab_name != lab);
        self
    }

    /// `share` of the builds (rounded, chosen by the seed) are missing.
    pub fn drop_builds(mut self, share: f64) -> RevisionSpec {
        let n = self.builds.len();
        let k = ((n as f64) * share).round() as usize;
        let gone: BTreeSet<usize> = Rng::new(self.seed ^ 0xb1d)
            .shuffled(n)
            .into_iter()
            .take(k)
            .collect();
        let mut i = 0;
        self.builds.retain(|_| {
            i += 1;
            !gone.contains(&(i - 1))
        });
        self
    }

    /// Exactly `rate` of the test cases (rounded, chosen by the seed) PASS and the others
    /// FAIL; regressions stay on failures only.
    pub fn test_pass_rate(mut self, rate: f64) -> RevisionSpec {
        let n = self.cases.len();
        let k = ((n as f64) * rate).round() as usize;
        let pass: BTreeSet<usize> = Rng::new(self.seed ^ 0x7e57)
            .shuffled(n)
            .into_iter()
            .take(k)
            .collect();
        for (i, c) in self.cases.iter_mut().enumerate() {
            if pass.contains(&i) {
                c.status = "PASS".into();
                c.regression = false;
            } else {
                c.status = "FAIL".into();
            }
        }
        self
    }

    pub fn arriving(mut self, arrival: Arrival) -> RevisionSpec {
        self.arrival = arrival;
        self
    }

    /// The test keys of its cases, in order of first appearance.
    fn group_keys(&self) -> Vec<TestKey> {
        let mut seen = BTreeSet::new();
        self.cases
            .iter()
            .filter(|c| seen.insert(c.key.clone()))
            .map(|c| c.key.clone())
            .collect()
    }

    /// What a correct client reads of it once every result has arrived.
    pub fn expected(&self) -> Revision {
        let mut r = Revision {
            kernel: self.kernel.clone(),
            git_commit: self.commit.clone(),
            created_ms: self.created_ms,
            ..Revision::default()
        };
        for b in &self.builds {
            r.builds.total += 1;
            match (b.status.as_str(), b.warnings.unwrap_or(0)) {
                ("PASS", 0) => r.builds.pass += 1,
                ("PASS", _) => r.builds.pass_warnings += 1,
                ("FAIL", _) => r.builds.fail += 1,
                _ => r.builds.other += 1,
            }
            r.build_keys.insert(b.key.clone(), b.status.clone());
        }
        for c in &self.cases {
            r.tests.total += 1;
            let k = r.test_keys.entry(c.key.clone()).or_default();
            match c.status.as_str() {
                "PASS" => {
                    r.tests.pass += 1;
                    k.pass += 1
                }
                "FAIL" => {
                    r.tests.fail += 1;
                    k.fail += 1
                }
                "SKIP" => {
                    r.tests.skip += 1;
                    k.other += 1
                }
                _ => {
                    r.tests.other += 1;
                    k.other += 1
                }
            }
            if c.regression {
                r.regressions += 1;
            }
            r.labs.insert(c.key.lab_name.clone());
        }
        r
    }
}

/// A document and when it shows.
struct Stored {
    doc: Map<String, Value>,
    /// The revision it belongs to (`None`: always shown), its index among that revision's
    /// documents of its collection, and how many there are.
    gate: Option<(usize, usize, usize)>,
}

struct Rev {
    job: String,
    git_branch: String,
    kernel: String,
    added: Instant,
    reads: u32,
    arrival: Arrival,
}

struct St {
    /// Collection name → documents, in `_id` order.
    docs: BTreeMap<&'static str, Vec<Stored>>,
    revs: Vec<Rev>,
    next_oid: u64,
    requests: Vec<Request>,
    faults: VecDeque<Fault>,
    always: Option<Fault>,
}

pub struct BackendDouble {
    st: Arc<Mutex<St>>,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const COLLECTIONS: &[&str] = &["build", "job", "test_case", "test_group", "test_regression"];

/// The GET filter keys each collection knows (kernelci-backend's `*_VALID_KEYS`); others are
/// ignored.
fn valid_keys(collection: &str) -> &'static [&'static str] {
    match collection {
        "job" => &[
            "created_on",
            "git_branch",
            "git_commit",
            "git_describe",
            "_id",
            "job",
            "kernel",
            "kernel_version",
            "private",
            "status",
        ],
        "build" => &[
            "arch",
            "build_environment",
            "build_type",
            "compiler",
            "compiler_version",
            "created_on",
            "defconfig",
            "defconfig_full",
            "errors",
            "git_branch",
            "git_commit",
            "git_describe",
            "_id",
            "job",
            "job_id",
            "kernel",
            "kernel_version",
            "status",
            "warnings",
        ],
        // Real: no `device_type` and no `status` among a test group's filters.
        "test_group" => &[
            "arch",
            "board_instance",
            "build_environment",
            "build_id",
            "created_on",
            "defconfig",
            "defconfig_full",
            "git_branch",
            "git_commit",
            "job",
            "job_id",
            "kernel",
            "lab_name",
            "mach",
            "name",
            "parent_id",
            "time",
            "version",
        ],
        "test_case" => &[
            "arch",
            "build_environment",
            "created_on",
            "defconfig_full",
            "device_type",
            "git_branch",
            "job",
            "kernel",
            "lab_name",
            "mach",
            "name",
            "plan",
            "regression_id",
            "status",
            "test_group_id",
            "time",
            "version",
        ],
        "test_regression" => &[
            "job",
            "git_branch",
            "kernel",
            "plan",
            "device_type",
            "lab_name",
            "build_environment",
            "defconfig_full",
        ],
        // `/count`'s own list.
        _ => &[
            "arch",
            "build_environment",
            "build_id",
            "defconfig",
            "defconfig_full",
            "device_type",
            "errors",
            "git_branch",
            "git_commit",
            "git_describe",
            "_id",
            "job",
            "job_id",
            "kernel",
            "lab_name",
            "mach",
            "name",
            "parent_id",
            "plan",
            "regression_id",
            "status",
            "test_case_id",
            "test_group_id",
            "version",
            "warnings",
        ],
    }
}

/// Keys whose values are integers.
const INT_KEYS: &[&str] = &["warnings", "errors", "retries"];

impl BackendDouble {
    /// A backend accepting [`TOKEN`], with no documents.
    pub fn start() -> BackendDouble {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let st = Arc::new(Mutex::new(St {
            docs: COLLECTIONS.iter().map(|c| (*c, Vec::new())).collect(),
            revs: Vec::new(),
            next_oid: 1,
            requests: Vec::new(),
            faults: VecDeque::new(),
            always: None,
        }));
        let app = Router::new().fallback(handle).with_state(st.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        BackendDouble {
            st,
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap()
    }

    /// Serves a revision; returns what a correct client reads of it once complete.
    pub fn add(&self, spec: &RevisionSpec) -> Revision {
        let mut st = self.st();
        let rev = st.revs.len();
        st.revs.push(Rev {
            job: spec.job.clone(),
            git_branch: spec.git_branch.clone(),
            kernel: spec.kernel.clone(),
            added: Instant::now(),
            reads: 0,
            arrival: spec.arrival,
        });
        let common = |doc: &mut Map<String, Value>| {
            doc.insert("job".into(), json!(spec.job));
            doc.insert("git_branch".into(), json!(spec.git_branch));
            doc.insert("kernel".into(), json!(spec.kernel));
            doc.insert("git_commit".into(), json!(spec.commit));
            doc.insert("git_describe".into(), json!(spec.kernel));
        };
        let date = |i: usize| json!({"$date": spec.created_ms + 1000 * (i as u64 + 1)});

        let mut job = Map::new();
        common(&mut job);
        job.insert("created_on".into(), json!({"$date": spec.created_ms}));
        job.insert("status".into(), json!("BUILD"));
        job.insert("kernel_version".into(), json!(spec.kernel));
        let job_id = st.insert("job", job, None);

        let n = spec.builds.len();
        for (i, b) in spec.builds.iter().enumerate() {
            let mut d = Map::new();
            common(&mut d);
            d.insert("job_id".into(), oid(&job_id));
            d.insert("arch".into(), json!(b.key.arch));
            d.insert(
                "defconfig".into(),
                json!(b.key.defconfig_full.split('+').next().unwrap_or("")),
            );
            d.insert("defconfig_full".into(), json!(b.key.defconfig_full));
            d.insert("build_environment".into(), json!(b.key.build_environment));
            d.insert("status".into(), json!(b.status));
            if let Some(w) = b.warnings {
                d.insert("warnings".into(), json!(w));
                d.insert("errors".into(), json!(0));
            }
            d.insert("created_on".into(), date(i));
            st.insert("build", d, Some((rev, i, n)));
        }

        let keys = spec.group_keys();
        let groups = keys.len();
        let mut group_ids = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let b = spec.builds.get(i % n.max(1));
            let mut d = Map::new();
            common(&mut d);
            d.insert("name".into(), json!(key.plan));
            d.insert("device_type".into(), json!(key.device_type));
            d.insert("lab_name".into(), json!(key.lab_name));
            d.insert("arch".into(), json!(b.map_or("x86_64", |b| &b.key.arch)));
            d.insert(
                "defconfig_full".into(),
                json!(b.map_or("defconfig", |b| &b.key.defconfig_full)),
            );
            d.insert(
                "build_environment".into(),
                json!(b.map_or("gcc-10", |b| &b.key.build_environment)),
            );
            // `null` matches null or missing: half of them have no `parent_id` at all.
            if i % 2 == 0 {
                d.insert("parent_id".into(), Value::Null);
            }
            d.insert("created_on".into(), date(i));
            let sub = d.clone();
            let id = st.insert("test_group", d, Some((rev, i, groups)));
            let mut sub = sub;
            sub.insert("name".into(), json!(format!("{}.sub", key.plan)));
            sub.insert("parent_id".into(), oid(&id));
            st.insert("test_group", sub, Some((rev, i, groups)));
            group_ids.insert(key.clone(), id);
        }

        let cases = spec.cases.len();
        let regressions: Vec<usize> = (0..cases).filter(|i| spec.cases[*i].regression).collect();
        for (i, c) in spec.cases.iter().enumerate() {
            let mut d = Map::new();
            common(&mut d);
            d.remove("git_commit");
            d.remove("git_describe");
            d.insert("name".into(), json!(c.name));
            d.insert("plan".into(), json!(c.key.plan));
            d.insert("device_type".into(), json!(c.key.device_type));
            d.insert("lab_name".into(), json!(c.key.lab_name));
            d.insert("status".into(), json!(c.status));
            d.insert("test_group_id".into(), oid(&group_ids[&c.key]));
            d.insert("created_on".into(), date(i));
            if c.regression {
                let mut r = Map::new();
                r.insert("job".into(), json!(spec.job));
                r.insert("git_branch".into(), json!(spec.git_branch));
                r.insert("kernel".into(), json!(spec.kernel));
                r.insert("plan".into(), json!(c.key.plan));
                r.insert("device_type".into(), json!(c.key.device_type));
                r.insert("lab_name".into(), json!(c.key.lab_name));
                r.insert("hierarchy".into(), json!([c.key.plan, c.name]));
                r.insert("created_on".into(), date(i));
                let nth = regressions.iter().position(|x| *x == i).unwrap();
                let rid = st.insert("test_regression", r, Some((rev, nth, regressions.len())));
                d.insert("regression_id".into(), oid(&rid));
            } else if i % 2 == 0 {
                // Not a regression: `null`, or (as often) no field at all.
                d.insert("regression_id".into(), Value::Null);
            }
            st.insert("test_case", d, Some((rev, i, cases)));
        }
        spec.expected()
    }

    /// A revision of [`JOB`]/[`BRANCH`] from tuples: builds `(key, status, warnings)`, test
    /// cases `(key, name, status, regression?)`.
    pub fn add_revision(
        &self,
        kernel: &str,
        commit: &str,
        created_ms: u64,
        builds: Vec<(BuildKey, &str, u64)>,
        tests: Vec<(TestKey, &str, &str, bool)>,
    ) -> Revision {
        let spec = RevisionSpec {
            commit: commit.into(),
            builds: builds
                .into_iter()
                .map(|(key, status, warnings)| BuildSpec {
                    key,
                    status: status.into(),
                    warnings: Some(warnings),
                })
                .collect(),
            cases: tests
                .into_iter()
                .map(|(key, name, status, regression)| CaseSpec {
                    key,
                    name: name.into(),
                    status: status.into(),
                    regression,
                })
                .collect(),
            ..RevisionSpec::new(kernel, created_ms)
        };
        self.add(&spec)
    }

    /// Serves `faults` instead of the next answers, one each.
    pub fn fail_next(&self, faults: &[Fault]) {
        self.st().faults.extend(faults.iter().copied());
    }

    /// Serves `fault` instead of every answer from now on (`None`: stop).
    pub fn fail_always(&self, fault: Option<Fault>) {
        self.st().always = fault;
    }

    /// How many times a revision has been read (its `/job` document was in an answer).
    pub fn reads(&self, kernel: &str) -> u32 {
        self.st()
            .revs
            .iter()
            .filter(|r| r.kernel == kernel)
            .map(|r| r.reads)
            .sum()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.st().requests.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Request> {
        self.st()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.st().requests.clear();
    }
}

impl Drop for BackendDouble {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn oid(hex: &str) -> Value {
    json!({"$oid": hex})
}

impl St {
    /// Adds a document with a fresh `_id`; returns the id's hex.
    fn insert(
        &mut self,
        collection: &'static str,
        mut doc: Map<String, Value>,
        gate: Option<(usize, usize, usize)>,
    ) -> String {
        let id = format!("619b2e0c{:016x}", self.next_oid);
        self.next_oid += 1;
        doc.insert("_id".into(), oid(&id));
        self.docs
            .get_mut(collection)
            .unwrap()
            .push(Stored { doc, gate });
        id
    }

    fn visible(&self, s: &Stored, now: Instant) -> bool {
        let Some((rev, i, n)) = s.gate else {
            return true;
        };
        let r = &self.revs[rev];
        match r.arrival {
            Arrival::Complete => true,
            Arrival::Reads(parts) => {
                let parts = parts.max(1) as usize;
                let part = i * parts / n.max(1);
                part < (r.reads.max(1) as usize)
            }
            Arrival::Over(d) => {
                let at = r.added + d.mul_f64(i as f64 / n.max(1) as f64);
                now >= at
            }
        }
    }

    /// The documents of `collection` matching the query's filters, shown now.
    fn matching(
        &self,
        collection: &str,
        keys: &[&str],
        q: &[(String, String)],
    ) -> Vec<&Map<String, Value>> {
        let filters = filters_of(keys, q);
        let now = Instant::now();
        self.docs[collection]
            .iter()
            .filter(|s| self.visible(s, now))
            .map(|s| &s.doc)
            .filter(|d| filters.iter().all(|f| f.matches(d)))
            .collect()
    }
}

enum Filter {
    /// Any of these values (`null` alone: null or missing).
    Eq(String, Vec<Value>),
    Null(String),
    Gte(String, Value),
    Lt(String, Value),
}

impl Filter {
    fn matches(&self, d: &Map<String, Value>) -> bool {
        match self {
            Filter::Null(k) => d.get(k).is_none_or(Value::is_null),
            Filter::Eq(k, vals) => d.get(k).is_some_and(|v| vals.iter().any(|q| same(v, q))),
            Filter::Gte(k, q) => d
                .get(k)
                .and_then(|v| compare(v, q))
                .is_some_and(|o| o != Ordering::Less),
            Filter::Lt(k, q) => d
                .get(k)
                .and_then(|v| compare(v, q))
                .is_some_and(|o| o == Ordering::Less),
        }
    }
}

/// A query value, typed as the backend types it.
fn typed(key: &str, v: &str) -> Option<Value> {
    if INT_KEYS.contains(&key) {
        v.parse::<i64>().ok().map(Value::from)
    } else {
        Some(Value::String(v.to_owned()))
    }
}

/// The value to compare of a document's field: `$oid` and `$date` unwrapped.
fn plain(v: &Value) -> &Value {
    match v {
        Value::Object(o) => o.get("$oid").or_else(|| o.get("$date")).unwrap_or(v),
        _ => v,
    }
}

fn same(doc: &Value, q: &Value) -> bool {
    match (plain(doc), q) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::String(b)) => a.to_string() == *b,
        _ => false,
    }
}

/// Mongo's comparison within one type; across types, no match.
fn compare(doc: &Value, q: &Value) -> Option<Ordering> {
    match (plain(doc), q) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// The sort order of values: missing/null, numbers, strings, the rest.
fn sort_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> (u8, f64, String) {
        match v.map(plain) {
            None | Some(Value::Null) => (0, 0.0, String::new()),
            Some(Value::Number(n)) => (1, n.as_f64().unwrap_or(0.0), String::new()),
            Some(Value::String(s)) => (2, 0.0, s.clone()),
            Some(other) => (3, 0.0, other.to_string()),
        }
    }
    let (a, b) = (rank(a), rank(b));
    a.0.cmp(&b.0)
        .then(a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal))
        .then(a.2.cmp(&b.2))
}

fn filters_of(keys: &[&str], q: &[(String, String)]) -> Vec<Filter> {
    let mut out = Vec::new();
    for key in keys {
        let vals: Vec<&str> = q
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect();
        match vals.as_slice() {
            [] => {}
            ["null"] => out.push(Filter::Null((*key).into())),
            vals => {
                let typed: Option<Vec<Value>> = vals.iter().map(|v| typed(key, v)).collect();
                // A value of the wrong type drops the filter, as the backend does.
                if let Some(t) = typed {
                    out.push(Filter::Eq((*key).into(), t));
                }
            }
        }
    }
    for (op, arg) in q.iter().filter(|(k, _)| k == "gte" || k == "lt") {
        let Some((field, value)) = arg.split_once(',') else {
            continue;
        };
        if !keys.contains(&field) {
            continue;
        }
        let Some(value) = typed(field, value) else {
            continue;
        };
        out.push(if op == "gte" {
            Filter::Gte(field.into(), value)
        } else {
            Filter::Lt(field.into(), value)
        });
    }
    out
}

fn envelope(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

fn error(code: u16, reason: &str) -> Response {
    envelope(
        StatusCode::from_u16(code).unwrap(),
        json!({"code": code, "reason": reason}),
    )
}

fn fault_response(f: Fault) -> Response {
    match f {
        Fault::Status(code @ (502..=504)) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html><body><h1>{code}</h1>nginx</body></html>"),
        )
            .into_response(),
        Fault::Status(code) => error(code, "Internal database error"),
        Fault::Drop => {
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                Ok(bytes::Bytes::from_static(
                    b"{\"code\":200,\"count\":1000,\"result\":[",
                )),
                Err(std::io::Error::other("connection dropped")),
            ];
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
                Body::from_stream(futures_util::stream::iter(chunks)),
            )
                .into_response()
        }
    }
}

async fn handle(
    State(st): State<Arc<Mutex<St>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut st = st.lock().unwrap();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fault = st.faults.pop_front().or(st.always);
    let (resp, dropped) = match fault {
        Some(f) => (fault_response(f), f == Fault::Drop),
        None => (
            respond(&mut st, &method, &uri, authorization.as_deref()),
            false,
        ),
    };
    st.requests.push(Request {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization,
        status: resp.status().as_u16(),
        dropped,
    });
    resp
}

fn respond(st: &mut St, method: &Method, uri: &Uri, auth: Option<&str>) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path == "version" || path == "version/" {
        return envelope(
            StatusCode::OK,
            json!({"code": 200, "result": [{"full_version": VERSION, "version": VERSION}]}),
        );
    }
    if *method != Method::GET {
        // POST /batch and the rest need a write token.
        return error(
            403,
            "Operation not permitted: provided token is not authorized",
        );
    }
    if auth != Some(TOKEN) {
        return error(
            403,
            "Operation not permitted: provided token is not authorized",
        );
    }
    let q = query_pairs(uri.query().unwrap_or(""));
    if let Some(rest) = path.strip_prefix("count") {
        return count(st, rest, &q);
    }
    let (collection, id) = match split_collection(path) {
        Some(c) => c,
        None => return error(404, "Resource not found"),
    };
    if !id.is_empty() {
        let now = Instant::now();
        let found = st.docs[collection]
            .iter()
            .filter(|s| st.visible(s, now))
            .find(|s| s.doc.get("_id").map(plain) == Some(&Value::String(id.to_owned())));
        return match found {
            Some(s) => envelope(
                StatusCode::OK,
                json!({"code": 200, "result": [project(&s.doc, &q)]}),
            ),
            None => error(404, &format!("Resource '{id}' not found")),
        };
    }
    list(st, collection, &q)
}

/// `(collection, id)` of a list path: `build`, `builds/`, `test/case`, `build/<id>`.
fn split_collection(path: &str) -> Option<(&'static str, &str)> {
    let table: &[(&str, &str)] = &[
        ("test/regression", "test_regression"),
        ("test/group", "test_group"),
        ("test/case", "test_case"),
        ("job", "job"),
        ("build", "build"),
    ];
    for (prefix, collection) in table {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        let rest = rest.strip_prefix('s').unwrap_or(rest);
        if rest.is_empty() {
            return Some((collection, ""));
        }
        if let Some(id) = rest.strip_prefix('/') {
            return Some((collection, id.trim_end_matches('/')));
        }
    }
    None
}

fn count(st: &mut St, rest: &str, q: &[(String, String)]) -> Response {
    let rest = rest.strip_prefix('s').unwrap_or(rest);
    let keys = valid_keys("count");
    if rest.is_empty() || rest == "/" {
        let result: Vec<Value> = COLLECTIONS
            .iter()
            .map(|c| json!({"collection": c, "count": st.matching(c, keys, q).len()}))
            .collect();
        return envelope(StatusCode::OK, json!({"code": 200, "result": result}));
    }
    let name = rest.strip_prefix('/').unwrap_or(rest);
    // `/count/build/` names the collection `build/`: there is none.
    let Some(collection) = COLLECTIONS.iter().find(|c| **c == name) else {
        return error(404, &format!("Collection {name} not found"));
    };
    let n = st.matching(collection, keys, q).len();
    envelope(
        StatusCode::OK,
        json!({"code": 200, "result": [{"collection": collection, "count": n}]}),
    )
}

fn int_arg(q: &[(String, String)], key: &str) -> usize {
    q.iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .map_or(0, |n| n.max(0) as usize)
}

fn project(doc: &Map<String, Value>, q: &[(String, String)]) -> Value {
    let fields: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "field")
        .map(|(_, v)| v.as_str())
        .collect();
    let nfields: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "nfield")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut out = Map::new();
    for (k, v) in doc {
        let keep = if fields.is_empty() {
            true
        } else {
            k == "_id" || fields.contains(&k.as_str())
        };
        if keep && !nfields.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn list(st: &mut St, collection: &'static str, q: &[(String, String)]) -> Response {
    let mut docs: Vec<Map<String, Value>> = st
        .matching(collection, valid_keys(collection), q)
        .into_iter()
        .cloned()
        .collect();
    let sort: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v.as_str())
        .collect();
    if !sort.is_empty() {
        let order = q
            .iter()
            .rev()
            .find(|(k, _)| k == "sort_order")
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .filter(|o| *o == 1)
            .unwrap_or(-1);
        docs.sort_by(|a, b| {
            let o = sort
                .iter()
                .map(|f| sort_cmp(a.get(*f), b.get(*f)))
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal);
            if order == 1 {
                o
            } else {
                o.reverse()
            }
        });
    }
    let skip = int_arg(q, "skip");
    let limit = int_arg(q, "limit");
    if let Some((_, field)) = q.iter().rev().find(|(k, _)| k == "aggregate") {
        let mut seen = Vec::new();
        let mut result = Vec::new();
        for d in &docs {
            let v = d.get(field).cloned().unwrap_or(Value::Null);
            if !seen.contains(&v) {
                seen.push(v);
                result.push(project(d, q));
            }
        }
        if limit > 0 {
            result.truncate(limit);
        }
        return envelope(
            StatusCode::OK,
            json!({"code": 200, "limit": limit, "result": result}),
        );
    }
    let total = docs.len();
    let page: Vec<Value> = docs
        .iter()
        .skip(skip)
        .take(if limit == 0 { usize::MAX } else { limit })
        .map(|d| project(d, q))
        .collect();
    // Read: the revisions whose `/job` documents are answered.
    if collection == "job" {
        for d in &page {
            let key = |f: &str| d.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
            let (job, branch, kernel) = (key("job"), key("git_branch"), key("kernel"));
            for r in st.revs.iter_mut() {
                if r.job == job && r.git_branch == branch && r.kernel == kernel {
                    r.reads += 1;
                }
            }
        }
    }
    // The trap: `count` is capped by `limit`.
    let count = if limit == 0 { total } else { total.min(limit) };
    envelope(
        StatusCode::OK,
        json!({"code": 200, "count": count, "limit": limit, "skip": skip, "result": page}),
    )
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
