//! `kci-build prod` end to end: the real binary against a Jenkins double that speaks
//! Jenkins's protocol, real git remotes (bare repositories standing in for GitHub and
//! linux-stable), real `ansible-playbook` against localhost, real `hugo`, a real Docker
//! build pushed to a real registry.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::backend::{BackendDouble, RevisionSpec, Shape, TOKEN as BACKEND_TOKEN};
use common::git::git;
use common::jenkins::{BuildSpec, JenkinsDouble, JobSpec, TOKEN, USER};
use common::registry::{Auth, Registry};

const DAY: &str = "20261207";
const TAG: &str = "kernelci-20261207.0";

/// KernelCI's production in a directory: remotes, a site file, a web root, an image tree.
struct Prod {
    dir: tempfile::TempDir,
    jenkins: JenkinsDouble,
    backend: BackendDouble,
    _registry: Registry,
    registry: String,
}

impl Prod {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A bare remote `name` whose branches are filled from a scratch checkout by `seed`.
    fn remote(&self, name: &str, seed: impl FnOnce(&Path)) -> PathBuf {
        let bare = self.path(&format!("remotes/{name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = self.path(&format!("seed/{name}"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        seed(&work);
        bare
    }

    fn url(&self, name: &str) -> String {
        format!(
            "file://{}",
            self.path(&format!("remotes/{name}.git")).display()
        )
    }

    fn new() -> Prod {
        let dir = tempfile::tempdir().unwrap();
        let jenkins = JenkinsDouble::start();
        let registry = Registry::start(Auth::None);
        let p = Prod {
            registry: registry.addr(),
            _registry: registry,
            dir,
            jenkins,
            backend: BackendDouble::start(),
        };
        p.seed_backend();
        p.seed_jenkins();
        p.seed_repositories();
        p.seed_images();
        p.write_site();
        p
    }

    /// The pipeline on a Monday morning: one trigger build past its kernel builds (it has
    /// artifacts) still waiting for tests, one that has not got that far, a bisection.
    fn seed_jenkins(&self) {
        let j = &self.jenkins;
        for job in ["kernel-tree-monitor", "lava-bisection", "job-dsl"] {
            j.add_job(job, JobSpec::default());
        }
        j.add_job(
            "kernel-build-trigger",
            JobSpec {
                run_for: Duration::from_millis(300),
                ..JobSpec::default()
            },
        );
        j.add_build(
            "kernel-build-trigger",
            BuildSpec {
                run_for: Duration::from_secs(2),
                artifacts_after: Some(Duration::ZERO),
                ..BuildSpec::default()
            },
        );
        j.add_build(
            "kernel-build-trigger",
            BuildSpec {
                run_for: Duration::from_secs(600),
                ..BuildSpec::default()
            },
        );
        j.add_build(
            "lava-bisection",
            BuildSpec {
                run_for: Duration::from_secs(600),
                ..BuildSpec::default()
            },
        );
    }

    /// The pipe cleaners of the five previous Mondays, and this one's results (healthy).
    fn seed_backend(&self) {
        let t0 = 1_764_547_200_000u64;
        let week = 7 * 24 * 3_600_000u64;
        for w in 0..5u64 {
            let kernel = format!("kernelci-202611{:02}.0", 2 + 7 * w);
            self.backend.add(&RevisionSpec::healthy(
                &kernel,
                t0 + w * week,
                w,
                Shape::default(),
            ));
        }
        self.backend.add(&RevisionSpec::healthy(
            TAG,
            t0 + 5 * week,
            99,
            Shape::default(),
        ));
    }

    fn seed_repositories(&self) {
        let commit = |w: &Path, file: &str, text: &str, msg: &str| {
            std::fs::write(w.join(file), text).unwrap();
            git(w, &["add", "."]);
            git(w, &["commit", "-q", "-m", msg]);
        };
        // kernelci-core: kernelci.org is behind main by one commit and carries its own.
        self.remote("kernelci-core", |w| {
            commit(w, "README", "core\n", "core: start");
            git(w, &["branch", "kernelci.org"]);
            commit(w, "main.txt", "new on main\n", "core: a change on main");
            git(w, &["checkout", "-q", "kernelci.org"]);
            commit(w, "prod.txt", "production only\n", "core: production tweak");
            git(w, &["push", "-q", "origin", "main", "kernelci.org"]);
        });
        // test-definitions: the fork's branches and Linaro's master, which moved on.
        self.remote("test-definitions-upstream", |w| {
            commit(w, "automated.yaml", "v1\n", "upstream: start");
            git(w, &["branch", "-m", "master"]);
            git(w, &["push", "-q", "origin", "master"]);
        });
        self.remote("test-definitions", |w| {
            let up = self.url("test-definitions-upstream");
            git(w, &["pull", "-q", &up, "master"]);
            git(w, &["checkout", "-q", "-b", "kernelci.org"]);
            commit(w, "kernelci.yaml", "ours\n", "kernelci: our test");
            git(
                w,
                &["push", "-q", "origin", "kernelci.org", "kernelci.org:main"],
            );
        });
        let up_work = self.path("seed/test-definitions-upstream");
        commit(&up_work, "new.yaml", "v2\n", "upstream: a new test");
        git(&up_work, &["push", "-q", "origin", "master"]);
        // linux-stable and KernelCI's patches on top of it; the fork starts empty.
        self.remote("linux-stable", |w| {
            commit(w, "Makefile", "VERSION = 5\n", "Linux 5.15.80");
            git(w, &["branch", "-m", "linux-5.15.y"]);
            git(w, &["push", "-q", "origin", "linux-5.15.y"]);
            git(w, &["checkout", "-q", "-b", "patches"]);
            commit(w, "kernelci.txt", "tweak 1\n", "kernelci: first tweak");
            commit(w, "other.txt", "tweak 2\n", "kernelci: second tweak");
        });
        let patches = self.path("patches/linux/kernelci.org");
        std::fs::create_dir_all(&patches).unwrap();
        git(
            &self.path("seed/linux-stable"),
            &["format-patch", "-q", "-2", "-o", patches.to_str().unwrap()],
        );
        self.remote("linux", |w| {
            commit(w, "README", "kernelci linux fork\n", "fork: start");
            git(w, &["push", "-q", "origin", "main"]);
        });
        // The apps and their -config repositories (a playbook against localhost).
        for app in ["backend", "frontend"] {
            self.remote(&format!("kernelci-{app}"), |w| {
                commit(w, "app.py", &format!("{app} v1\n"), "app: start");
                git(w, &["push", "-q", "origin", "main", "main:kernelci.org"]);
                commit(w, "app.py", &format!("{app} v2\n"), "app: next");
                git(w, &["push", "-q", "origin", "main"]);
            });
            let deploy = self.path(&format!("deployed/{app}"));
            std::fs::create_dir_all(&deploy).unwrap();
            let hosts = format!(
                "[{app}]\nkernelci-{app} ansible_connection=local ansible_become_method=su ansible_python_interpreter=/usr/bin/python3 deploy_dir={}\n",
                deploy.display()
            );
            let playbook = format!(
                "- hosts: {app}\n  gather_facts: false\n  tasks:\n    - name: the app at git_head\n      copy:\n        dest: \"{{{{ deploy_dir }}}}/git_head\"\n        content: \"{{{{ git_head }}}}\\n\"\n      tags: [app]\n    - name: count deployments, and see every process's arguments\n      shell: echo {{{{ git_head }}}} >> {{{{ deploy_dir }}}}/deployments && ps -eo args > {{{{ deploy_dir }}}}/ps.txt\n      tags: [app]\n    - name: configuration with secrets\n      copy:\n        dest: \"{{{{ deploy_dir }}}}/secrets\"\n        content: \"x\"\n      tags: [app, secrets]\n"
            );
            self.remote(&format!("kernelci-{app}-config"), |w| {
                std::fs::write(w.join("hosts"), &hosts).unwrap();
                commit(w, "site.yml", &playbook, "config: the playbook");
                git(w, &["push", "-q", "origin", "main"]);
            });
        }
        // kernelci-project: a minimal hugo site.
        self.remote("kernelci-project", |w| {
            std::fs::create_dir_all(w.join("layouts")).unwrap();
            std::fs::create_dir_all(w.join("content")).unwrap();
            std::fs::write(w.join("config.toml"), "baseURL = \"https://kernelci.org/\"\ntitle = \"KernelCI\"\n").unwrap();
            std::fs::write(
                w.join("layouts/index.html"),
                "<html><body><h1>{{ .Site.Title }}</h1>{{ range .Site.RegularPages }}<p>{{ .Title }}</p>{{ end }}</body></html>\n",
            )
            .unwrap();
            commit(
                w,
                "content/production.md",
                "---\ntitle: \"Production\"\ndraft: true\n---\nHow linux.kernelci.org works.\n",
                "site: production page",
            );
            git(w, &["push", "-q", "origin", "main:kernelci.org"]);
        });
        std::fs::create_dir_all(self.path("www")).unwrap();
        std::fs::write(self.path("www/stale.html"), "last week\n").unwrap();
    }

    fn seed_images(&self) {
        self.write(
            "images/config.toml",
            "prefix = \"kernelci/\"\nsource-date-epoch = 1717200000\n",
        );
        std::fs::create_dir_all(self.path("images/busybox")).unwrap();
        std::fs::copy("/bin/busybox", self.path("images/busybox/busybox")).unwrap();
        self.write(
            "images/busybox/Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\"]\n",
        );
        self.write(
            "images/busybox/image.toml",
            "[[target]]\nname = \"busybox\"\n",
        );
    }

    fn write_site(&self) {
        let site = format!(
            r#"state = "state"
[jenkins]
url = "{jenkins}"
user = "{USER}"
token-env = "KCI_JENKINS_TOKEN"
poll-seconds = 1
drain-minutes = 2
restart-minutes = 1

[core]
url = "{core}"

[test-definitions]
url = "{td}"
upstream = "{td_up}"

[linux]
fork = "{linux}"
stable = "{stable}"
stable-branch = "linux-5.15.y"
patches = "patches/linux/kernelci.org"

[backend]
config-repo = "{backend_config}"
app-repo = "{backend}"
host = "kernelci-backend"

[frontend]
config-repo = "{frontend_config}"
app-repo = "{frontend}"
host = "kernelci-frontend"

[ansible]

[website]
repo = "{project}"
web-root = "www"

[docker]
registry = "{registry}"

[trigger]
parameters = {{ KERNEL_URL = "{{fork}}", KERNEL_BRANCH = "{{branch}}", COMMIT_ID = "{{commit}}", KERNEL_DESCRIBE = "{{tag}}" }}

[backend-api]
url = "{backend_api}"
token-env = "KCI_BACKEND_TOKEN"

[verify]
settle-seconds = 1
wait-minutes = 1
"#,
            jenkins = self.jenkins.url(),
            core = self.url("kernelci-core"),
            td = self.url("test-definitions"),
            td_up = self.url("test-definitions-upstream"),
            linux = self.url("linux"),
            stable = self.url("linux-stable"),
            backend_config = self.url("kernelci-backend-config"),
            backend = self.url("kernelci-backend"),
            frontend_config = self.url("kernelci-frontend-config"),
            frontend = self.url("kernelci-frontend"),
            project = self.url("kernelci-project"),
            registry = self.registry,
            backend_api = self.backend.url(),
        );
        self.write("production.toml", &site);
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kci-build"));
        cmd.current_dir(self.dir.path())
            .env("KCI_BUILD_STORE", self.path("store"))
            .env("KCI_JENKINS_TOKEN", TOKEN)
            .env("KCI_BACKEND_TOKEN", BACKEND_TOKEN)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("KCI_REGISTRY")
            .arg("prod")
            .arg("--date")
            .arg(DAY)
            .args(args);
        cmd
    }

    fn kci(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.path(&format!("state/journal/{DAY}.0.jsonl")))
            .unwrap_or_default()
    }

    fn tags(&self, remote: &str) -> Vec<String> {
        git(&self.path(&format!("remotes/{remote}.git")), &["tag", "-l"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Everything a completed Monday did, each exactly once.
fn assert_monday_done(p: &Prod) {
    let j = &p.jenkins;
    // pause
    assert!(j.is_disabled("kernel-tree-monitor"));
    assert!(j.is_disabled("lava-bisection"));
    let with_artifacts = j.build("kernel-build-trigger", 1).unwrap();
    let without = j.build("kernel-build-trigger", 2).unwrap();
    assert!(
        !with_artifacts.stopped,
        "a trigger build past its kernel builds is waited for"
    );
    assert!(
        without.stopped,
        "a trigger build without artifacts is aborted"
    );
    assert!(j.build("lava-bisection", 1).unwrap().stopped);
    // restart: exactly one, noticed by its new session
    assert_eq!(j.restarts(), 1);
    assert_eq!(j.count("POST", "/safeRestart"), 1);
    // dsl: one seed build
    assert_eq!(j.builds("job-dsl").len(), 1, "job-dsl triggered once");
    // core: rebased on main, tagged, pushed
    let core = p.path("remotes/kernelci-core.git");
    let main = git(&core, &["rev-parse", "main"]);
    let prod_parent = git(&core, &["rev-parse", "kernelci.org~1"]);
    assert_eq!(prod_parent, main, "kernelci.org is rebased on main");
    assert_eq!(p.tags("kernelci-core"), [TAG]);
    assert_eq!(
        git(&core, &["log", "-1", "--format=%cn", "kernelci.org"]),
        "kernelci.org bot"
    );
    // test-definitions: rebased on upstream's new master, pushed to kernelci.org and main
    let td = p.path("remotes/test-definitions.git");
    let up = git(
        &p.path("remotes/test-definitions-upstream.git"),
        &["rev-parse", "master"],
    );
    assert_eq!(git(&td, &["rev-parse", "kernelci.org~1"]), up);
    assert_eq!(
        git(&td, &["rev-parse", "kernelci.org"]),
        git(&td, &["rev-parse", "main"])
    );
    assert_eq!(p.tags("test-definitions"), [TAG]);
    // kernel: the pipe cleaner
    let linux = p.path("remotes/linux.git");
    assert_eq!(p.tags("linux"), [TAG]);
    assert_eq!(git(&linux, &["show", "kernelci.org:kernelci.org"]), TAG);
    let pipe_cleaner = git(&linux, &["rev-parse", "kernelci.org"]);
    assert_eq!(git(&linux, &["rev-list", "--count", "kernelci.org"]), "4");
    // backend and frontend: deployed once at the app's head, secrets left alone
    for app in ["backend", "frontend"] {
        let head = git(
            &p.path(&format!("remotes/kernelci-{app}.git")),
            &["rev-parse", "kernelci.org"],
        );
        let deployed = p.path(&format!("deployed/{app}"));
        assert_eq!(
            std::fs::read_to_string(deployed.join("git_head"))
                .unwrap()
                .trim(),
            head
        );
        assert_eq!(
            std::fs::read_to_string(deployed.join("deployments"))
                .unwrap()
                .lines()
                .count(),
            1,
            "{app} deployed once"
        );
        assert!(!deployed.join("secrets").exists(), "--skip-tags=secrets");
        let ps = std::fs::read_to_string(deployed.join("ps.txt")).unwrap();
        assert!(ps.contains("ansible-playbook"), "{ps}");
        assert!(
            !ps.contains(TOKEN),
            "the token is in no process's arguments"
        );
    }
    // website: hugo's output replaced last week's
    let index = std::fs::read_to_string(p.path("www/index.html")).unwrap();
    assert!(
        index.contains("<h1>KernelCI</h1>") && index.contains("Production"),
        "{index}"
    );
    assert!(!p.path("www/stale.html").exists());
    // docker: the image is in the registry
    let tags = reqwest_blocking_get(&format!(
        "http://{}/v2/kernelci/busybox/tags/list",
        p.registry
    ));
    assert!(tags.contains("\"latest\""), "{tags}");
    // trigger: one build of the pipe cleaner, followed to its number
    let triggered: Vec<_> = j
        .builds("kernel-build-trigger")
        .into_iter()
        .filter_map(|n| j.build("kernel-build-trigger", n))
        .filter(|b| {
            b.params
                .iter()
                .any(|(k, v)| k == "COMMIT_ID" && *v == pipe_cleaner)
        })
        .collect();
    assert_eq!(triggered.len(), 1, "one pipe-cleaner build");
    assert_eq!(
        j.count("POST", "/job/kernel-build-trigger/buildWithParameters"),
        1
    );
    let journal = p.journal();
    assert!(
        journal.contains(&format!("\"build\":\"{}\"", triggered[0].number)),
        "{journal}"
    );
    // verify: the pipe cleaner judged against the five previous revisions, charted
    assert!(journal.contains(r#""verdict":"similar""#), "{journal}");
    let chart = std::fs::read_to_string(p.path(&format!("state/verify/{TAG}.svg"))).unwrap();
    assert!(chart.contains(&format!("data-kernel=\"{TAG}\"")), "{chart}");
}

/// A GET with curl (the tests' registry speaks plain HTTP on loopback).
fn reqwest_blocking_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [TOKEN, BACKEND_TOKEN] {
        assert!(!text.contains(secret), "a secret is in {what}:\n{text}");
    }
}

#[test]
fn a_killed_monday_resumes_and_every_step_happens_once() {
    let p = Prod::new();
    // Killed in the middle of update: once the website step has started.
    let mut child = p
        .command(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if p.journal().contains(r#""event":"start","step":"website""#) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!(
                "prod run ended before the website step ({status}):\n{err}\n{}",
                p.journal()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{}",
            p.journal()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out, _) = p.kci(&["status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let state = |step: &str| {
        status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state("frontend"), "done");
    assert_eq!(state("website"), "interrupted");
    assert_eq!(state("kernel"), "not-started");

    // The rerun resumes: the website step starts again, the rest runs once.
    let (code, out, err) = p.kci(&["run", "--json"]);
    // The transcript, for `cargo test --test prod -- --nocapture`.
    eprintln!("$ kci-build prod run --json    # resumed\n{err}");
    assert_eq!(code, 0, "{err}\n{}", p.journal());
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    for s in report["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "done", "{s}");
        let tries = if s["step"] == "website" { 2 } else { 1 };
        assert_eq!(s["attempts"], tries, "{s}");
    }
    assert!(err.contains("Running website"), "{err}");
    assert!(
        !err.contains("Running pause"),
        "done steps are not run again: {err}"
    );
    assert_monday_done(&p);
    assert_no_secret("stderr", &err);
    assert_no_secret("stdout", &out);
    assert_no_secret("the journal", &p.journal());

    // A run that is finished starts no step again; `run` then begins a new run only when asked.
    let (code, _, err) = p.kci(&["update", "kernel", "trigger"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already pushed, not pushing"), "{err}");
    assert!(
        err.contains("Found"),
        "the pipe cleaner's build is found, not triggered again: {err}"
    );
    assert_eq!(
        p.jenkins
            .count("POST", "/job/kernel-build-trigger/buildWithParameters"),
        1
    );
    assert_eq!(p.tags("linux"), [TAG]);
}

#[test]
fn dry_run_prints_every_call_and_makes_none() {
    let p = Prod::new();
    let before = p.jenkins.requests().len();
    let (code, out, err) = p.kci(&["run", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    for expected in [
        format!("POST {}/job/kernel-tree-monitor/disable", p.jenkins.url()),
        format!("POST {}/safeRestart", p.jenkins.url()),
        format!("POST {}/job/job-dsl/build", p.jenkins.url()),
        "ansible-playbook site.yml -i hosts -l kernelci-backend -D -b --skip-tags=secrets -t app -e git_head=<rev>".to_owned(),
        format!("git tag -a kernelci-{DAY}.<N>"),
        format!("POST {}/job/kernel-build-trigger/buildWithParameters?COMMIT_ID=<commit>", p.jenkins.url()),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
    assert_eq!(p.jenkins.requests().len(), before, "no HTTP call was made");
    assert!(!p.path("state/journal").exists(), "no journal is written");
    assert!(p.tags("linux").is_empty());
    assert_no_secret("the plan", &err);
}

#[test]
fn a_bad_site_file_names_the_field_and_a_missing_token_its_variable() {
    let p = Prod::new();
    let site = std::fs::read_to_string(p.path("production.toml")).unwrap();
    p.write(
        "production.toml",
        &site.replace("poll-seconds = 1", "poll-seconds = 0"),
    );
    let (code, _, err) = p.kci(&["pause"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("production.toml: jenkins.poll-seconds: must be at least 1"),
        "{err}"
    );
    p.write("production.toml", &site);
    let out = p
        .command(&["pause"])
        .env_remove("KCI_JENKINS_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("set the environment variable KCI_JENKINS_TOKEN"),
        "{err}"
    );
    assert_eq!(p.jenkins.count("POST", "/job/"), 0, "nothing was done");
}
