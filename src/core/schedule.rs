//! Which targets of a build can go next: a pure function of the selection (in dependency
//! order) and what has started, finished and failed. The image build loop asks it after
//! every change; failure propagation and ordering live
//! here, where a unit test sees them without Docker.

use std::collections::BTreeSet;

use super::names::TargetName;
use super::recipe::TargetRecipe;

/// What a target not started yet can do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<'a> {
    /// Every dependency is done: it can start.
    Ready(&'a TargetRecipe),
    /// A dependency failed (or was itself blocked): it never starts.
    Blocked {
        target: &'a TargetRecipe,
        dep: &'a TargetName,
    },
}

/// What happened so far.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub started: BTreeSet<TargetName>,
    pub done: BTreeSet<TargetName>,
    pub failed: BTreeSet<TargetName>,
}

/// The targets of `selection` not started yet that are ready or blocked, in selection order
/// (dependencies first). Those still waiting on a running dependency are not listed.
pub fn next<'a>(selection: &[&'a TargetRecipe], progress: &Progress) -> Vec<Next<'a>> {
    selection
        .iter()
        .filter(|t| !progress.started.contains(&t.name))
        .filter_map(|t| {
            let deps = t.kind.deps();
            if let Some(dep) = deps.iter().find(|d| progress.failed.contains(**d)) {
                return Some(Next::Blocked { target: t, dep });
            }
            deps.iter()
                .all(|d| progress.done.contains(*d))
                .then_some(Next::Ready(t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::recipe::parse_image_file;
    use std::path::Path;

    fn recipes() -> Vec<TargetRecipe> {
        let text = r#"
[[target]]
name = "base"
[[target]]
name = "gcc"
parent = "base"
[[target]]
name = "clang"
parent = "base"
[[target]]
name = "kselftest"
parent = "gcc"
"#;
        parse_image_file(Path::new("/tree/images/x/image.toml"), text).unwrap()
    }

    fn names(next: &[Next<'_>]) -> Vec<String> {
        next.iter()
            .map(|n| match n {
                Next::Ready(t) => format!("ready {}", t.name),
                Next::Blocked { target, dep } => format!("blocked {} by {dep}", target.name),
            })
            .collect()
    }

    #[test]
    fn children_wait_for_parents_and_failures_block_the_subtree_only() {
        let all = recipes();
        let sel: Vec<&TargetRecipe> = all.iter().collect();
        let mut p = Progress::default();
        assert_eq!(names(&next(&sel, &p)), ["ready base"]);
        p.started.insert("base".parse().unwrap());
        assert!(next(&sel, &p).is_empty(), "everything waits on base");
        p.done.insert("base".parse().unwrap());
        assert_eq!(names(&next(&sel, &p)), ["ready gcc", "ready clang"]);
        p.started
            .extend(["gcc".parse().unwrap(), "clang".parse().unwrap()]);
        p.failed.insert("gcc".parse().unwrap());
        assert_eq!(names(&next(&sel, &p)), ["blocked kselftest by gcc"]);
        p.done.insert("clang".parse().unwrap());
        assert_eq!(names(&next(&sel, &p)), ["blocked kselftest by gcc"]);
    }
}
