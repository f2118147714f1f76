//! What a build would take on N engines, before spending anything: list scheduling of a
//! dependency graph whose jobs have known (or estimated) durations — pure.
//!
//! Each engine runs one job at a time. Whenever jobs are ready (every dependency finished),
//! the one with the longest remaining path to the end (its *bottom level*: itself plus the
//! longest chain after it) goes first, on the engine where it can start earliest. That is
//! the classic HLFET heuristic: within 2× of the optimum, and the optimum itself on the
//! independent jobs of a rootfs matrix when durations are equal. No schedule beats the
//! critical path, nor the total work divided by N: [`Schedule::lower_bound`].

use std::collections::BTreeMap;

use serde::Serialize;

/// A job of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub name: String,
    /// Jobs that must finish first (names of other jobs; unknown names are ignored: they
    /// are already built).
    pub deps: Vec<String>,
    pub seconds: f64,
    /// The duration comes from an earlier build's record, not an estimate.
    pub measured: bool,
}

/// Where and when one job runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slot {
    pub name: String,
    pub engine: usize,
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub engines: usize,
    /// In start order.
    pub slots: Vec<Slot>,
    pub makespan: f64,
    /// The sum of all durations: the makespan on one engine.
    pub total_seconds: f64,
    /// The longest chain of dependent jobs, first to last, and its length in seconds.
    pub critical_path: Vec<String>,
    pub critical_seconds: f64,
}

impl Schedule {
    /// How many times faster than one engine.
    pub fn speedup(&self) -> f64 {
        if self.makespan > 0.0 {
            self.total_seconds / self.makespan
        } else {
            1.0
        }
    }

    /// No schedule on this many engines can finish sooner.
    pub fn lower_bound(&self) -> f64 {
        self.critical_seconds
            .max(self.total_seconds / self.engines as f64)
    }
}

/// A dependency cycle, naming a job on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the jobs' dependencies form a cycle through `{0}`")]
pub struct Cycle(pub String);

/// The schedule of `jobs` on `engines` engines (at least one).
pub fn schedule(jobs: &[Job], engines: usize) -> Result<Schedule, Cycle> {
    let engines = engines.max(1);
    let index: BTreeMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| {
            j.deps
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let level = bottom_levels(jobs, &deps)?;
    let mut end: Vec<Option<f64>> = vec![None; jobs.len()];
    let mut free = vec![0.0_f64; engines];
    let mut slots = Vec::with_capacity(jobs.len());
    while slots.len() < jobs.len() {
        // The ready job with the longest way to go (ties: the first named).
        let next = (0..jobs.len())
            .filter(|&i| end[i].is_none() && deps[i].iter().all(|&d| end[d].is_some()))
            .max_by(|&a, &b| {
                level[a]
                    .total_cmp(&level[b])
                    .then_with(|| jobs[b].name.cmp(&jobs[a].name))
            })
            .expect("no cycle, so some job is ready");
        let ready_at = deps[next]
            .iter()
            .map(|&d| end[d].unwrap_or(0.0))
            .fold(0.0, f64::max);
        let (engine, start) = free
            .iter()
            .enumerate()
            .map(|(e, &f)| (e, f.max(ready_at)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .expect("at least one engine");
        let finish = start + jobs[next].seconds;
        free[engine] = finish;
        end[next] = Some(finish);
        slots.push(Slot {
            name: jobs[next].name.clone(),
            engine,
            start,
            end: finish,
        });
    }
    slots.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.engine.cmp(&b.engine)));
    let makespan = slots.iter().map(|s| s.end).fold(0.0, f64::max);
    let (critical_path, critical_seconds) = critical(jobs, &deps, &level);
    Ok(Schedule {
        engines,
        slots,
        makespan,
        total_seconds: jobs.iter().map(|j| j.seconds).sum(),
        critical_path,
        critical_seconds,
    })
}

/// Each job's own duration plus the longest chain of jobs that depend on it.
fn bottom_levels(jobs: &[Job], deps: &[Vec<usize>]) -> Result<Vec<f64>, Cycle> {
    let mut children = vec![Vec::new(); jobs.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            children[d].push(i);
        }
    }
    // Depth-first, with a marker for jobs on the current path (a cycle).
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; jobs.len()];
    let mut level = vec![0.0; jobs.len()];
    fn visit(
        i: usize,
        jobs: &[Job],
        children: &[Vec<usize>],
        mark: &mut [Mark],
        level: &mut [f64],
    ) -> Result<(), Cycle> {
        match mark[i] {
            Mark::Done => return Ok(()),
            Mark::Open => return Err(Cycle(jobs[i].name.clone())),
            Mark::New => {}
        }
        mark[i] = Mark::Open;
        let mut longest: f64 = 0.0;
        for &c in &children[i] {
            visit(c, jobs, children, mark, level)?;
            longest = longest.max(level[c]);
        }
        level[i] = jobs[i].seconds + longest;
        mark[i] = Mark::Done;
        Ok(())
    }
    for i in 0..jobs.len() {
        visit(i, jobs, &children, &mut mark, &mut level)?;
    }
    Ok(level)
}

/// The chain of the job with the highest bottom level, following at each step the child
/// with the highest one.
fn critical(jobs: &[Job], deps: &[Vec<usize>], level: &[f64]) -> (Vec<String>, f64) {
    let highest = |candidates: &mut dyn Iterator<Item = usize>| {
        candidates.max_by(|&a, &b| {
            level[a]
                .total_cmp(&level[b])
                .then_with(|| jobs[b].name.cmp(&jobs[a].name))
        })
    };
    let Some(mut at) = highest(&mut (0..jobs.len())) else {
        return (Vec::new(), 0.0);
    };
    let seconds = level[at];
    let mut path = vec![jobs[at].name.clone()];
    while let Some(next) = highest(&mut (0..jobs.len()).filter(|&c| deps[c].contains(&at))) {
        path.push(jobs[next].name.clone());
        at = next;
    }
    (path, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, deps: &[&str], seconds: f64) -> Job {
        Job {
            name: name.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            seconds,
            measured: true,
        }
    }

    #[test]
    fn a_chain_takes_its_sum_on_any_number_of_engines() {
        let jobs = [
            job("base", &[], 10.0),
            job("gcc", &["base"], 20.0),
            job("kself", &["gcc"], 5.0),
        ];
        for n in [1, 4, 16] {
            let s = schedule(&jobs, n).unwrap();
            assert_eq!(s.makespan, 35.0);
            assert_eq!(s.critical_path, ["base", "gcc", "kself"]);
            assert_eq!(s.critical_seconds, 35.0);
            assert_eq!(s.speedup(), 1.0);
        }
    }

    #[test]
    fn independent_equal_jobs_fill_the_engines() {
        let jobs: Vec<Job> = (0..8).map(|i| job(&format!("j{i}"), &[], 10.0)).collect();
        assert_eq!(schedule(&jobs, 1).unwrap().makespan, 80.0);
        assert_eq!(schedule(&jobs, 4).unwrap().makespan, 20.0);
        let s = schedule(&jobs, 16).unwrap();
        assert_eq!(s.makespan, 10.0);
        assert_eq!(s.speedup(), 8.0);
        assert_eq!(s.lower_bound(), 10.0);
    }

    #[test]
    fn the_longest_way_to_go_starts_first_and_children_wait_for_parents() {
        // A builder everything needs, then a long and two short jobs on two engines: the
        // long one starts first, the short ones share the other engine.
        let jobs = [
            job("builder", &[], 5.0),
            job("short-a", &["builder"], 10.0),
            job("short-b", &["builder"], 10.0),
            job("long", &["builder"], 30.0),
        ];
        let s = schedule(&jobs, 2).unwrap();
        assert_eq!(s.makespan, 35.0);
        let slot = |n: &str| s.slots.iter().find(|x| x.name == n).unwrap().clone();
        assert_eq!(slot("builder").end, 5.0);
        assert_eq!(slot("long").start, 5.0);
        assert_ne!(slot("long").engine, slot("short-a").engine);
        assert_eq!(slot("short-b").start, 15.0);
        assert!(s.makespan >= s.lower_bound());
        assert_eq!(s.total_seconds, 55.0);
    }

    #[test]
    fn unknown_dependencies_are_built_already_and_cycles_are_named() {
        let s = schedule(&[job("a", &["gone"], 3.0)], 2).unwrap();
        assert_eq!(s.makespan, 3.0);
        let e = schedule(&[job("a", &["b"], 1.0), job("b", &["a"], 1.0)], 1).unwrap_err();
        assert!(e.0 == "a" || e.0 == "b");
        let empty = schedule(&[], 4).unwrap();
        assert_eq!((empty.makespan, empty.speedup()), (0.0, 1.0));
    }
}
