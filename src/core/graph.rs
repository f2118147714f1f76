//! The target graph: every target with its parent, in dependency order.
//!
//! Each target has at most one parent (its `FROM`), so the graph is a forest; this module
//! checks that names are unique, parents exist and nothing loops, and answers the two
//! questions the planner asks: "in which order" and "what else does this selection need".

use std::collections::{BTreeMap, BTreeSet};

use super::names::TargetName;
use super::recipe::{RecipeError, TargetKind, TargetRecipe};

#[derive(Debug, Clone)]
pub struct Graph {
    /// Targets in dependency order: a parent always comes before its children; ties are
    /// broken by name so the order is stable.
    ordered: Vec<TargetRecipe>,
    index: BTreeMap<TargetName, usize>,
}

impl Graph {
    pub fn new(targets: Vec<TargetRecipe>) -> Result<Graph, RecipeError> {
        let mut by_name: BTreeMap<TargetName, TargetRecipe> = BTreeMap::new();
        for t in targets {
            if let Some(first) = by_name.get(&t.name) {
                return Err(RecipeError::new(
                    &t.recipe_file,
                    format!("target ({}).name", t.name),
                    format!("already declared in {}", first.recipe_file.display()),
                ));
            }
            by_name.insert(t.name.clone(), t);
        }
        for t in by_name.values() {
            let field = if matches!(t.kind, TargetKind::Index { .. }) {
                "index"
            } else {
                "parent"
            };
            for p in t.kind.deps() {
                let Some(dep) = by_name.get(p) else {
                    return Err(RecipeError::new(
                        &t.recipe_file,
                        format!("target ({}).{field}", t.name),
                        format!("no target is named `{p}`"),
                    ));
                };
                if matches!(dep.kind, TargetKind::Index { .. }) {
                    return Err(RecipeError::new(
                        &t.recipe_file,
                        format!("target ({}).{field}", t.name),
                        format!("`{p}` is a multi-platform index; name one of its members"),
                    ));
                }
            }
            if let TargetKind::Index { members } = &t.kind {
                let mut seen = BTreeMap::new();
                for m in members {
                    if let Some(other) = seen.insert(&by_name[m].platform, m) {
                        return Err(RecipeError::new(
                            &t.recipe_file,
                            format!("target ({}).index", t.name),
                            format!("`{other}` and `{m}` are both {}", by_name[m].platform),
                        ));
                    }
                }
            }
        }
        // Depth = longest chain of dependencies; detects cycles by bounding the walk.
        fn depth<'a>(
            t: &'a TargetRecipe,
            by_name: &'a BTreeMap<TargetName, TargetRecipe>,
            seen: usize,
        ) -> Result<usize, RecipeError> {
            if seen > by_name.len() {
                return Err(RecipeError::new(
                    &t.recipe_file,
                    format!("target ({}).parent", t.name),
                    "the parent chain loops back to this target",
                ));
            }
            let mut d = 0;
            for p in t.kind.deps() {
                d = d.max(1 + depth(&by_name[p], by_name, seen + 1)?);
            }
            Ok(d)
        }
        let mut depths: BTreeMap<&TargetName, usize> = BTreeMap::new();
        for t in by_name.values() {
            depths.insert(&t.name, depth(t, &by_name, 0)?);
        }
        let depth = depths;
        let mut names: Vec<&TargetName> = by_name.keys().collect();
        names.sort_by_key(|n| (depth[n], *n));
        let names: Vec<TargetName> = names.into_iter().cloned().collect();
        let ordered: Vec<TargetRecipe> = names.iter().map(|n| by_name[n].clone()).collect();
        let index = ordered
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Graph { ordered, index })
    }

    pub fn targets(&self) -> &[TargetRecipe] {
        &self.ordered
    }

    pub fn get(&self, name: &TargetName) -> Option<&TargetRecipe> {
        self.index.get(name).map(|&i| &self.ordered[i])
    }

    pub fn parent_of(&self, name: &TargetName) -> Option<&TargetRecipe> {
        self.get(name)
            .and_then(|t| t.kind.parent())
            .and_then(|p| self.get(p))
    }

    /// The requested targets plus all their ancestors, in dependency order. An empty
    /// request means every target.
    pub fn closure(&self, requested: &[TargetName]) -> Result<Vec<&TargetRecipe>, UnknownTarget> {
        if requested.is_empty() {
            return Ok(self.ordered.iter().collect());
        }
        let mut wanted = BTreeSet::new();
        let mut stack = Vec::new();
        for name in requested {
            stack.push(self.get(name).ok_or_else(|| UnknownTarget {
                name: name.clone(),
                known: self.ordered.iter().map(|t| t.name.to_string()).collect(),
            })?);
        }
        while let Some(cur) = stack.pop() {
            if wanted.insert(cur.name.clone()) {
                stack.extend(cur.kind.deps().into_iter().filter_map(|d| self.get(d)));
            }
        }
        Ok(self
            .ordered
            .iter()
            .filter(|t| wanted.contains(&t.name))
            .collect())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no target is named `{name}`; known targets: {}", known.join(", "))]
pub struct UnknownTarget {
    pub name: TargetName,
    pub known: Vec<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::recipe::parse_image_file;
    use std::path::Path;

    pub(crate) fn graph(text: &str) -> Result<Graph, RecipeError> {
        Graph::new(parse_image_file(Path::new("images/x/image.toml"), text)?)
    }

    const CHAIN: &str = r#"
[[target]]
name = "gcc:x86"
parent = "build-base"
[[target]]
name = "build-base"
parent = "debian"
[[target]]
name = "debian"
bootstrap = { suite = "bookworm" }
[[target]]
name = "clang"
parent = "build-base"
"#;

    #[test]
    fn orders_parents_first_and_closes_over_ancestors() {
        let g = graph(CHAIN).unwrap();
        let order: Vec<&str> = g.targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["debian", "build-base", "clang", "gcc:x86"]);
        let sel: Vec<&str> = g
            .closure(&["gcc:x86".parse().unwrap()])
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(sel, ["debian", "build-base", "gcc:x86"]);
        let err = g
            .closure(&["nope".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope`") && err.contains("gcc:x86"), "{err}");
    }

    #[test]
    fn indexes_depend_on_their_members_and_are_validated() {
        let g = graph(
            "[[target]]\nname = \"bb\"\nindex = [\"bb:arm64\", \"bb:amd64\"]\n\
             [[target]]\nname = \"bb:amd64\"\n\
             [[target]]\nname = \"bb:arm64\"\nplatform = \"linux/arm64/v8\"\n",
        )
        .unwrap();
        let order: Vec<&str> = g.targets().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["bb:amd64", "bb:arm64", "bb"]);
        let sel: Vec<&str> = g
            .closure(&["bb".parse().unwrap()])
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(sel, ["bb:amd64", "bb:arm64", "bb"]);
        let e = graph("[[target]]\nname = \"bb\"\nindex = [\"bb:a\", \"bb:b\"]\n[[target]]\nname = \"bb:a\"\n[[target]]\nname = \"bb:b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target (bb).index: `bb:a` and `bb:b` are both linux/amd64"),
            "{e}"
        );
        let e = graph("[[target]]\nname = \"bb\"\nindex = [\"other:a\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target[0] (bb).index: member `other:a` is not a tag of image `bb`"),
            "{e}"
        );
        let e = graph("[[target]]\nname = \"bb\"\nindex = [\"bb:a\"]\n[[target]]\nname = \"bb:a\"\n[[target]]\nname = \"c\"\nparent = \"bb\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target (c).parent: `bb` is a multi-platform index"),
            "{e}"
        );
        let e =
            graph("[[target]]\nname = \"bb\"\nindex = [\"bb:a\"]\nplatform = \"linux/amd64\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("target[0] (bb).platform: an index target takes only `index`"),
            "{e}"
        );
    }

    #[test]
    fn rejects_missing_parent_duplicates_and_cycles() {
        let e = graph("[[target]]\nname = \"a\"\nparent = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("target (a).parent: no target is named `b`"),
            "{e}"
        );
        let e = graph("[[target]]\nname = \"a\"\n[[target]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already declared"), "{e}");
        let e = graph(
            "[[target]]\nname = \"a\"\nparent = \"b\"\n[[target]]\nname = \"b\"\nparent = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("loops"), "{e}");
    }
}
