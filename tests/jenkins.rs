//! The real Jenkins client (`HttpJenkins`) and the procedure's Jenkins algorithms (pause,
//! restart readiness, trigger following) against a faithful HTTP double of Jenkins.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::jenkins::{
    BuildSpec, JenkinsDouble, JobSpec, RestartPlan, Then, PASSWORD, PASSWORD_USER, TOKEN, USER,
    VERSION,
};
use kci_build::error::Fault;
use kci_build::jenkins::{Credential, HttpJenkins, JenkinsApi, JenkinsError, Params, Probe};
use kci_build::prod::pause::{pause, PauseOptions};
use kci_build::prod::restart::{
    record_session, restart, wait_ready, ExpectAgents, ReadinessOptions, Verdict,
};
use kci_build::prod::trigger::{find_build, now_ms, trigger, TriggerOptions};
use kci_build::settings::Secret;

const MONITOR: &str = "kernel-tree-monitor";
const TRIGGER: &str = "kernel-build-trigger";
const BISECTION: &str = "lava-bisection";

fn client(d: &JenkinsDouble) -> HttpJenkins {
    HttpJenkins::with_timeout(
        &d.url(),
        USER,
        Credential::ApiToken(Secret::new(TOKEN)),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn params(kv: &[(&str, &str)]) -> Params {
    kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
}

fn running(ms: u64) -> BuildSpec {
    BuildSpec {
        run_for: Duration::from_millis(ms),
        ..BuildSpec::default()
    }
}

fn readiness(deadline_ms: u64, jobs: &[&str]) -> ReadinessOptions {
    ReadinessOptions {
        poll: Duration::from_millis(20),
        deadline: Duration::from_millis(deadline_ms),
        expected_jobs: jobs.iter().map(|s| (*s).into()).collect(),
        agents: ExpectAgents::Ignore,
    }
}

fn fast_trigger() -> TriggerOptions {
    TriggerOptions {
        poll: Duration::from_millis(20),
        deadline: Some(Duration::from_secs(5)),
    }
}

#[tokio::test]
async fn the_probe_reads_version_session_mode_and_jobs() {
    let d = JenkinsDouble::start();
    d.add_job("job-dsl", JobSpec::default());
    d.add_job(MONITOR, JobSpec::default());
    d.set_disabled(MONITOR, true);
    let Probe::Up(i) = client(&d).probe().await.unwrap() else {
        panic!("not up")
    };
    assert_eq!(i.version, VERSION);
    assert_eq!(i.session, d.session());
    assert_eq!(i.session.len(), 8);
    assert!(i.session.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(i.mode.as_deref(), Some("NORMAL"));
    assert!(!i.quieting_down);
    let jobs: Vec<(&str, &str)> = i
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.color.as_str()))
        .collect();
    assert_eq!(jobs, [("job-dsl", "notbuilt"), (MONITOR, "disabled")]);
    let r = &d.requests()[0];
    assert_eq!(r.path, "/api/json");
    assert_eq!(
        r.query.as_deref(),
        Some("tree=mode%2CquietingDown%2Cjobs%5Bname%2Ccolor%5D")
    );
    assert!(r.auth);
}

#[tokio::test]
async fn pause_aborts_unstarted_trigger_builds_waits_for_the_others_and_stops_bisections() {
    let d = JenkinsDouble::start();
    d.add_job(MONITOR, JobSpec::default());
    d.add_job(TRIGGER, JobSpec::default());
    d.add_job(BISECTION, JobSpec::default());
    let done = d.add_build(
        TRIGGER,
        BuildSpec {
            artifacts_after: Some(Duration::ZERO),
            ..BuildSpec::default()
        },
    );
    // In the labs: artifacts archived, finishes by itself in 400 ms.
    let in_labs = d.add_build(
        TRIGGER,
        BuildSpec {
            run_for: Duration::from_millis(400),
            artifacts_after: Some(Duration::ZERO),
            ..BuildSpec::default()
        },
    );
    // Still building kernels: no artifacts, would run for a minute.
    let unstarted_a = d.add_build(TRIGGER, running(60_000));
    let unstarted_b = d.add_build(TRIGGER, running(60_000));
    let bisecting = d.add_build(BISECTION, running(60_000));
    let old_bisection = d.add_build(BISECTION, BuildSpec::default());

    let jenkins = client(&d);
    let opts = PauseOptions {
        poll: Duration::from_millis(20),
        deadline: Some(Duration::from_secs(10)),
        ..PauseOptions::default()
    };
    let mut progress = Vec::new();
    let t0 = Instant::now();
    let report = pause(&jenkins, &opts, &mut |p| progress.push(p.running.clone()))
        .await
        .unwrap();

    assert_eq!(report.disabled, [MONITOR, BISECTION]);
    assert!(d.is_disabled(MONITOR) && d.is_disabled(BISECTION));
    assert!(!d.is_disabled(TRIGGER));
    let aborted: Vec<(&str, u64)> = report
        .aborted
        .iter()
        .map(|a| (a.job.as_str(), a.number))
        .collect();
    assert_eq!(
        aborted,
        [
            (TRIGGER, unstarted_b),
            (TRIGGER, unstarted_a),
            (BISECTION, bisecting)
        ]
    );
    // The build in the labs was waited for, not stopped, and finished on its own.
    assert!(report.trigger_wait.waited_for.contains(&in_labs));
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
    let labs = d.build(TRIGGER, in_labs).unwrap();
    assert_eq!(
        (labs.stopped, labs.result.as_deref()),
        (false, Some("SUCCESS"))
    );
    assert_eq!(
        d.count("POST", &format!("/job/{TRIGGER}/{in_labs}/stop")),
        0
    );
    assert_eq!(d.count("POST", &format!("/job/{TRIGGER}/{done}/")), 0);
    for n in [unstarted_a, unstarted_b] {
        assert_eq!(
            d.build(TRIGGER, n).unwrap().result.as_deref(),
            Some("ABORTED")
        );
    }
    assert_eq!(
        d.build(BISECTION, bisecting).unwrap().result.as_deref(),
        Some("ABORTED")
    );
    assert!(!d.build(BISECTION, old_bisection).unwrap().stopped);
    assert!(progress.iter().any(|r| r == &vec![in_labs]), "{progress:?}");
    // The JSON report names what was done.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["aborted"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn an_old_instance_still_up_is_not_reported_back() {
    let d = JenkinsDouble::start();
    d.add_job("job-dsl", JobSpec::default());
    let jenkins = client(&d);
    let old = record_session(&jenkins, &d.url()).await.unwrap();
    d.restart(RestartPlan {
        old_for: Duration::from_secs(3),
        ..RestartPlan::default()
    });
    let mut states = Vec::new();
    let v = wait_ready(
        &jenkins,
        &d.url(),
        &old,
        &readiness(300, &["job-dsl"]),
        &mut |p| states.push(p.state.clone()),
    )
    .await
    .unwrap();
    assert!(
        matches!(&v, Verdict::NotObserved { old_session, .. } if *old_session == old),
        "{v:?}"
    );
    assert!(
        v.to_string().starts_with("restart not observed after"),
        "{v}"
    );
    assert!(
        states.iter().all(|s| s.contains("old instance")),
        "{states:?}"
    );
    // Safe restart quiets the old instance down first.
    assert!(
        states.last().unwrap().contains("quieting down"),
        "{states:?}"
    );
    assert_eq!(d.restarts(), 0);
}

#[tokio::test]
async fn down_then_503_then_a_new_session_is_reported_back_with_its_agents() {
    let d = JenkinsDouble::start();
    for job in ["job-dsl", MONITOR, TRIGGER] {
        d.add_job(job, JobSpec::default());
    }
    d.add_agent("builder-1", true);
    d.add_agent("builder-2", true);
    d.set_agents_reconnect(Duration::from_millis(150));
    d.set_restart_plan(RestartPlan {
        old_for: Duration::from_millis(100),
        down_for: Duration::from_millis(200),
        starting_for: Duration::from_millis(200),
        then: Then::Back,
    });
    let jenkins = client(&d);
    let old = d.session();
    let mut opts = readiness(5000, &["job-dsl", MONITOR, TRIGGER]);
    opts.agents = ExpectAgents::All;
    let mut states = Vec::new();
    let v = restart(&jenkins, &d.url(), &opts, &mut |p| {
        states.push(p.state.clone())
    })
    .await
    .unwrap();
    let Verdict::Back {
        version,
        session,
        jobs,
        agents_online,
        agents_total,
        waited_ms,
    } = &v
    else {
        panic!("{v:?} after {states:?}")
    };
    assert_eq!(version, VERSION);
    assert_ne!(*session, old);
    assert_eq!(*session, d.session());
    assert_eq!((*jobs, *agents_online, *agents_total), (3, 2, 2));
    // Old 100 ms + down 200 ms + 503 200 ms + agents 150 ms.
    assert!(*waited_ms >= 600, "{waited_ms}");
    assert_eq!(
        v.to_string(),
        format!(
            "Jenkins is back: {VERSION}, session {}…, 3 jobs, 2/2 agents online",
            &session[..4]
        )
    );
    // Each phase was seen, in order.
    let first = |needle: &str| states.iter().position(|s| s.contains(needle));
    let (o, dn, st, ag) = (
        first("old instance"),
        first("down ("),
        first("starting"),
        first("agents offline"),
    );
    assert!(o.is_some() && o < dn && dn < st && st < ag, "{states:?}");
    assert_eq!(d.count("POST", "/safeRestart"), 1);
    assert!(d.requests().iter().any(|r| r.status == 503));
}

#[tokio::test]
async fn a_jenkins_that_never_comes_back_is_never_back() {
    for (then, seen) in [(Then::StaysDown, "down"), (Then::StaysStarting, "starting")] {
        let d = JenkinsDouble::start();
        let jenkins = client(&d);
        let old = d.session();
        d.restart(RestartPlan {
            old_for: Duration::ZERO,
            down_for: Duration::from_millis(50),
            starting_for: Duration::ZERO,
            then,
        });
        let v = wait_ready(&jenkins, &d.url(), &old, &readiness(400, &[]), &mut |_| {})
            .await
            .unwrap();
        assert!(
            matches!(&v, Verdict::NeverBack { last_seen, .. } if last_seen.contains(seen)),
            "{then:?}: {v:?}"
        );
        assert!(v.to_string().contains("not back after"), "{v}");
    }
}

#[tokio::test]
async fn a_trigger_is_followed_to_its_build_with_its_parameters() {
    let d = JenkinsDouble::start();
    d.add_job(TRIGGER, JobSpec::default());
    d.add_job("job-dsl", JobSpec::default());
    d.set_queue(Duration::from_millis(150), Duration::from_secs(300));
    let jenkins = client(&d);
    let p = params(&[("TREE", "mainline"), ("MESSAGE", "a b&c=d/é")]);
    let t = trigger(&jenkins, TRIGGER, &p, &fast_trigger())
        .await
        .unwrap();
    assert_eq!(t.number, 1);
    assert!(t.url.ends_with(&format!("/job/{TRIGGER}/1/")), "{}", t.url);
    let build = d.build(TRIGGER, 1).unwrap();
    let got: BTreeMap<String, String> = build.params.into_iter().collect();
    assert_eq!(got, p);
    let state = jenkins.build(TRIGGER, 1).await.unwrap();
    assert_eq!(state.parameters, p);
    // It waited in the queue and was polled there.
    assert!(d.count("GET", &format!("/queue/item/{}/", t.queue_item)) >= 2);
    // No parameters: `/build`.
    let t = trigger(&jenkins, "job-dsl", &Params::new(), &fast_trigger())
        .await
        .unwrap();
    assert_eq!(t.number, 1);
    assert_eq!(d.count("POST", "/job/job-dsl/build"), 1);
    assert_eq!(d.count("POST", "/job/job-dsl/buildWithParameters"), 0);
}

#[tokio::test]
async fn a_queue_item_forgotten_after_leaving_the_queue_is_found_by_its_parameters() {
    let d = JenkinsDouble::start();
    d.add_job(TRIGGER, JobSpec::default());
    d.add_build(
        TRIGGER,
        BuildSpec {
            params: vec![("TREE".into(), "next".into())],
            ..BuildSpec::default()
        },
    );
    // Leaves the queue after 20 ms, forgotten 10 ms later; polled every 200 ms.
    d.set_queue(Duration::from_millis(20), Duration::from_millis(10));
    let jenkins = client(&d);
    let p = params(&[("TREE", "mainline")]);
    let opts = TriggerOptions {
        poll: Duration::from_millis(200),
        deadline: Some(Duration::from_secs(5)),
    };
    let t = trigger(&jenkins, TRIGGER, &p, &opts).await.unwrap();
    assert_eq!(t.number, 2, "{t:?}");
    let item = format!("/queue/item/{}/api/json", t.queue_item);
    let statuses: Vec<u16> = d
        .requests()
        .iter()
        .filter(|r| r.path == item)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 404]);
    assert_eq!(d.builds(TRIGGER), [1, 2], "triggered once");
}

#[tokio::test]
async fn find_build_makes_a_resumed_trigger_idempotent() {
    let d = JenkinsDouble::start();
    d.add_job(TRIGGER, JobSpec::default());
    d.set_queue(Duration::from_millis(10), Duration::from_secs(300));
    let jenkins = client(&d);
    let p = params(&[("TREE", "mainline"), ("TAG", "kernelci.org-20260601.0")]);
    let since = now_ms();
    assert_eq!(
        find_build(&jenkins, TRIGGER, &p, since).await.unwrap(),
        None
    );
    let t = trigger(&jenkins, TRIGGER, &p, &fast_trigger())
        .await
        .unwrap();
    let found = find_build(&jenkins, TRIGGER, &p, since)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.number, t.number);
    let other = params(&[("TREE", "mainline"), ("TAG", "kernelci.org-20260601.1")]);
    assert_eq!(
        find_build(&jenkins, TRIGGER, &other, since).await.unwrap(),
        None
    );
    // Started before `since`: not this run's.
    let later = now_ms() + 60_000;
    assert_eq!(
        find_build(&jenkins, TRIGGER, &p, later).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn triggering_a_disabled_job_is_bad_input_and_an_unknown_job_too() {
    let d = JenkinsDouble::start();
    d.add_job("job-dsl", JobSpec::default());
    let jenkins = client(&d);
    jenkins.disable("job-dsl").await.unwrap();
    assert!(d.is_disabled("job-dsl"));
    assert!(jenkins.job("job-dsl").await.unwrap().disabled());
    let err = trigger(&jenkins, "job-dsl", &Params::new(), &fast_trigger())
        .await
        .unwrap_err();
    assert!(matches!(err, JenkinsError::JobDisabled { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);
    assert!(err.to_string().contains("`job-dsl`"), "{err}");
    assert!(err.to_string().contains(&d.url()), "{err}");
    jenkins.enable("job-dsl").await.unwrap();
    assert!(!d.is_disabled("job-dsl"));

    let err = jenkins.job("no-such-job").await.unwrap_err();
    assert!(matches!(err, JenkinsError::UnknownJob { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);
}

#[tokio::test]
async fn a_password_user_sends_the_crumb_with_its_session_cookie() {
    let d = JenkinsDouble::start();
    d.add_job(MONITOR, JobSpec::default());
    // The double refuses a password user's POST without a crumb.
    let raw = reqwest::Client::new()
        .post(format!("{}/job/{MONITOR}/disable", d.url()))
        .basic_auth(PASSWORD_USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 403);
    // A crumb alone is not enough either: it belongs to the session of its request.
    let issued = reqwest::Client::new()
        .get(format!("{}/crumbIssuer/api/json", d.url()))
        .basic_auth(PASSWORD_USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    let cookie = issued.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("JSESSIONID."), "{cookie}");
    let crumb: serde_json::Value = issued.json().await.unwrap();
    let crumb = crumb["crumb"].as_str().unwrap().to_owned();
    let post = |with_cookie: bool| {
        let mut r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/job/{MONITOR}/disable", d.url()))
            .basic_auth(PASSWORD_USER, Some(PASSWORD))
            .header("Jenkins-Crumb", &crumb);
        if with_cookie {
            r = r.header("Cookie", cookie.split(';').next().unwrap());
        }
        r.send()
    };
    assert_eq!(post(false).await.unwrap().status().as_u16(), 403);
    assert!(!d.is_disabled(MONITOR));
    assert_eq!(post(true).await.unwrap().status().as_u16(), 302);
    assert!(d.is_disabled(MONITOR));
    d.set_disabled(MONITOR, false);
    let before = d.count("GET", "/crumbIssuer/api/json");

    let jenkins = HttpJenkins::with_timeout(
        &d.url(),
        PASSWORD_USER,
        Credential::Password(Secret::new(PASSWORD)),
        Duration::from_secs(2),
    )
    .unwrap();
    jenkins.disable(MONITOR).await.unwrap();
    assert!(d.is_disabled(MONITOR));
    jenkins.enable(MONITOR).await.unwrap();
    assert_eq!(
        d.count("GET", "/crumbIssuer/api/json"),
        before + 1,
        "the crumb is kept"
    );
    // The session expires: one 403, a fresh crumb, and the POST goes through.
    d.expire_sessions();
    jenkins.disable(MONITOR).await.unwrap();
    assert!(d.is_disabled(MONITOR));
    assert_eq!(d.count("GET", "/crumbIssuer/api/json"), before + 2);
    // GETs never need one.
    jenkins.job(MONITOR).await.unwrap();
    assert_eq!(d.count("GET", "/crumbIssuer/api/json"), before + 2);

    // An API token needs no crumb at all.
    client(&d).enable(MONITOR).await.unwrap();
    assert!(!d.is_disabled(MONITOR));
    assert_eq!(d.count("GET", "/crumbIssuer/api/json"), before + 2);

    // A crumb field that cannot be a header is the issuer's fault, named as such: not
    // "unreachable", and no POST is sent.
    d.set_crumb_field("Jenkins Crumb\n");
    let broken = HttpJenkins::with_timeout(
        &d.url(),
        PASSWORD_USER,
        Credential::Password(Secret::new(PASSWORD)),
        Duration::from_secs(2),
    )
    .unwrap();
    let posts = d.count("POST", &format!("/job/{MONITOR}/enable"));
    let e = broken.enable(MONITOR).await.unwrap_err();
    assert!(
        matches!(e, JenkinsError::Protocol { .. }) && e.to_string().contains("crumbIssuer"),
        "{e}"
    );
    assert_eq!(d.count("POST", &format!("/job/{MONITOR}/enable")), posts);
    d.set_crumb_field("Jenkins-Crumb");

    // CSRF off: the crumb issuer is 404 and POSTs go without.
    d.set_csrf(false);
    let fresh = HttpJenkins::with_timeout(
        &d.url(),
        PASSWORD_USER,
        Credential::Password(Secret::new(PASSWORD)),
        Duration::from_secs(2),
    )
    .unwrap();
    fresh.disable(MONITOR).await.unwrap();
    assert!(d.is_disabled(MONITOR));
}

#[tokio::test]
async fn the_secret_appears_in_no_error_or_debug_output() {
    let d = JenkinsDouble::start();
    d.add_job(MONITOR, JobSpec::default());
    let wrong = "wrong-token-7d1e55c0a9";
    let bad = HttpJenkins::with_timeout(
        &d.url(),
        USER,
        Credential::ApiToken(Secret::new(wrong)),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(bad.probe().await.unwrap(), Probe::Denied { status: 401 });
    let refused = bad.job(MONITOR).await.unwrap_err();
    assert!(
        matches!(refused, JenkinsError::Credentials { status: 401, .. }),
        "{refused:?}"
    );
    assert_eq!(refused.fault(), Fault::Environment);
    assert!(refused.to_string().contains(USER), "{refused}");
    let waited = wait_ready(&bad, &d.url(), "old", &readiness(500, &[]), &mut |_| {})
        .await
        .unwrap_err();

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/")
    };
    let gone = HttpJenkins::with_timeout(
        &closed,
        USER,
        Credential::Password(Secret::new(TOKEN)),
        Duration::from_secs(2),
    )
    .unwrap();
    let unreachable = gone.disable(MONITOR).await.unwrap_err();
    assert!(
        matches!(unreachable, JenkinsError::Unreachable { .. }),
        "{unreachable:?}"
    );
    assert_eq!(unreachable.fault(), Fault::Environment);
    let not_up = record_session(&gone, &closed).await.unwrap_err();

    let good = client(&d);
    let unknown = good.build(MONITOR, 42).await.unwrap_err();
    let mut texts = vec![format!("{bad:?}"), format!("{gone:?}"), format!("{good:?}")];
    for e in [refused, waited, unreachable, not_up, unknown] {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
        let chained = anyhow::Error::new(e).context("pausing Jenkins");
        texts.push(format!("{chained:#}"));
        texts.push(format!("{chained:?}"));
    }
    for t in &texts {
        for secret in [wrong, TOKEN, PASSWORD] {
            assert!(!t.contains(secret), "{secret} leaked in: {t}");
        }
    }
    assert!(texts.iter().any(|t| t.contains("***")), "{texts:?}");
    // The wrong token did reach the server as Basic auth, so the check above means something.
    assert!(d.requests().iter().all(|r| r.auth));
}
