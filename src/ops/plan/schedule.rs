//! `kci-build plan --engines N`: the schedule a build would run on N engines, before spending
//! anything. Each job's duration is the last one the store recorded for it (every build
//! records its own); a job never built here gets an estimate (the mean of the measured jobs
//! of its kind — for a rootfs, of the same arch first), marked `~`. The model itself is
//! `core::makespan`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::PlanOptions;
use crate::core::makespan::{self, Job, Schedule};
use crate::core::plan::Status;
use crate::ops::Workspace;
use crate::rootfs::BUILDER_TARGET;

/// An estimate when nothing of a kind was ever measured here: a toolchain image, a rootfs.
const IMAGE_GUESS: f64 = 300.0;
const ROOTFS_GUESS: f64 = 600.0;

#[derive(Serialize)]
struct Report<'a> {
    jobs: &'a [Job],
    schedule: &'a Schedule,
    speedup: f64,
    lower_bound: f64,
}

pub(super) fn render(ws: &Workspace, opts: &PlanOptions, engines: usize) -> anyhow::Result<String> {
    anyhow::ensure!(engines >= 1, "--engines: at least 1");
    let durations = ws.store.durations();
    let jobs = match &opts.rootfs {
        Some(recipes) => rootfs_jobs(ws, recipes, opts.cold, &durations)?,
        None => image_jobs(ws, opts, &durations)?,
    };
    let schedule = makespan::schedule(&jobs, engines)?;
    if opts.json {
        let report = Report {
            jobs: &jobs,
            schedule: &schedule,
            speedup: schedule.speedup(),
            lower_bound: schedule.lower_bound(),
        };
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    Ok(text(&jobs, &schedule))
}

/// The image targets a build would build (all of them with `cold`), each after its parent.
fn image_jobs(
    ws: &Workspace,
    opts: &PlanOptions,
    durations: &BTreeMap<String, f64>,
) -> anyhow::Result<Vec<Job>> {
    let planned = ws.plan_for(&opts.targets)?;
    let todo: Vec<_> = planned
        .iter()
        .filter(|p| opts.cold || p.status != Status::Cached)
        .collect();
    let guess = mean(
        durations.iter().filter(|(k, _)| k.starts_with("image:")),
        IMAGE_GUESS,
    );
    Ok(todo
        .iter()
        .map(|p| {
            let name = p.recipe.name.to_string();
            let deps = p
                .recipe
                .kind
                .parent()
                .map(|d| d.to_string())
                .into_iter()
                .collect();
            timed(
                name.clone(),
                deps,
                durations.get(&format!("image:{name}")),
                guess,
            )
        })
        .collect())
}

/// Every config and arch of the rootfs recipes (a Friday's whole matrix), after the
/// builder image when it is not built yet (or with `cold`).
fn rootfs_jobs(
    ws: &Workspace,
    recipes_dir: &Path,
    cold: bool,
    durations: &BTreeMap<String, f64>,
) -> anyhow::Result<Vec<Job>> {
    let recipes = crate::rootfs::recipes::load_recipes(recipes_dir)?;
    let builder: crate::core::names::TargetName = BUILDER_TARGET.parse().expect("valid name");
    let builder_built = ws
        .plan_for(std::slice::from_ref(&builder))?
        .iter()
        .any(|p| p.recipe.name == builder && p.status == Status::Cached);
    let mut jobs = Vec::new();
    if cold || !builder_built {
        let image_guess = mean(
            durations.iter().filter(|(k, _)| k.starts_with("image:")),
            IMAGE_GUESS,
        );
        let recorded = durations.get(&format!("image:{BUILDER_TARGET}"));
        jobs.push(timed(
            BUILDER_TARGET.to_owned(),
            Vec::new(),
            recorded,
            image_guess,
        ));
    }
    let all_rootfs = mean(
        durations.iter().filter(|(k, _)| k.starts_with("rootfs:")),
        ROOTFS_GUESS,
    );
    for r in &recipes {
        for arch in &r.arch_list {
            let same_arch = mean(
                durations
                    .iter()
                    .filter(|(k, _)| k.starts_with("rootfs:") && k.ends_with(&format!("/{arch}"))),
                all_rootfs,
            );
            let what = format!("rootfs:{}/{arch}", r.name);
            let deps = jobs
                .first()
                .map(|b: &Job| b.name.clone())
                .into_iter()
                .collect();
            jobs.push(timed(what.clone(), deps, durations.get(&what), same_arch));
        }
    }
    Ok(jobs)
}

fn timed(name: String, deps: Vec<String>, recorded: Option<&f64>, guess: f64) -> Job {
    Job {
        name,
        deps,
        seconds: recorded.copied().unwrap_or(guess),
        measured: recorded.is_some(),
    }
}

fn mean<'a>(values: impl Iterator<Item = (&'a String, &'a f64)>, otherwise: f64) -> f64 {
    let (n, sum) = values.fold((0, 0.0), |(n, s), (_, v)| (n + 1, s + v));
    if n == 0 {
        otherwise
    } else {
        sum / n as f64
    }
}

/// `1h 02m`, `4m 10s`, `35s`.
fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The summary, then one line per engine: a bar of the makespan with each job's share, and
/// the jobs it runs in order.
fn text(jobs: &[Job], s: &Schedule) -> String {
    const WIDTH: usize = 60;
    let estimated = jobs.iter().filter(|j| !j.measured).count();
    let mut out = format!(
        "{} builds on {} engine{} ({} durations measured here, {estimated} estimated, marked ~)\n",
        jobs.len(),
        s.engines,
        if s.engines == 1 { "" } else { "s" },
        jobs.len() - estimated,
    );
    out.push_str(&format!(
        "  makespan       {} (one engine: {}; speed-up {:.2}x; no schedule beats {})\n",
        human(s.makespan),
        human(s.total_seconds),
        s.speedup(),
        human(s.lower_bound())
    ));
    out.push_str(&format!(
        "  critical path  {} ({})\n",
        s.critical_path.join(" -> "),
        human(s.critical_seconds)
    ));
    let measured: BTreeMap<&str, bool> =
        jobs.iter().map(|j| (j.name.as_str(), j.measured)).collect();
    let scale = |t: f64| match s.makespan > 0.0 {
        true => ((t / s.makespan) * WIDTH as f64).round() as usize,
        false => 0,
    };
    for engine in 0..s.engines {
        let slots: Vec<_> = s.slots.iter().filter(|x| x.engine == engine).collect();
        if slots.is_empty() {
            continue;
        }
        let mut bar = vec![' '; WIDTH];
        for (i, slot) in slots.iter().enumerate() {
            let fill = if i % 2 == 0 { '#' } else { '=' };
            for c in bar
                .iter_mut()
                .take(scale(slot.end).min(WIDTH))
                .skip(scale(slot.start))
            {
                *c = fill;
            }
        }
        out.push_str(&format!(
            "  engine {:<3}|{}|\n",
            engine + 1,
            bar.into_iter().collect::<String>()
        ));
        for slot in slots {
            let mark = if measured.get(slot.name.as_str()) == Some(&true) {
                " "
            } else {
                "~"
            };
            out.push_str(&format!(
                "    {:>8} - {:<8} {mark}{}\n",
                human(slot.start),
                human(slot.end),
                slot.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_do() {
        assert_eq!(human(35.2), "35s");
        assert_eq!(human(250.0), "4m 10s");
        assert_eq!(human(3720.0), "1h 02m");
    }

    #[test]
    fn the_text_names_the_makespan_the_path_and_every_engine() {
        let jobs = vec![
            timed("builder".into(), vec![], Some(&60.0), 1.0),
            timed(
                "rootfs:a/amd64".into(),
                vec!["builder".into()],
                Some(&120.0),
                1.0,
            ),
            timed("rootfs:a/arm64".into(), vec!["builder".into()], None, 240.0),
        ];
        let s = makespan::schedule(&jobs, 2).unwrap();
        let t = text(&jobs, &s);
        assert!(
            t.starts_with("3 builds on 2 engines (2 durations measured here, 1 estimated"),
            "{t}"
        );
        assert!(
            t.contains("makespan       5m 00s (one engine: 7m 00s; speed-up 1.40x"),
            "{t}"
        );
        assert!(
            t.contains("critical path  builder -> rootfs:a/arm64 (5m 00s)"),
            "{t}"
        );
        assert!(
            t.contains("~rootfs:a/arm64") && t.contains(" rootfs:a/amd64"),
            "{t}"
        );
        assert_eq!(
            t.lines().filter(|l| l.starts_with("  engine ")).count(),
            2,
            "{t}"
        );
    }

    #[test]
    fn estimates_are_the_mean_of_what_was_measured_or_a_guess() {
        let d = BTreeMap::from([("a".to_owned(), 10.0), ("b".to_owned(), 30.0)]);
        assert_eq!(mean(d.iter(), 99.0), 20.0);
        assert_eq!(mean(d.iter().filter(|_| false), 99.0), 99.0);
    }
}
