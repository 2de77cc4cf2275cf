//! The `Dockerfile`, read as far as the checks need: its stages' instructions, the runtime
//! stage's environment, user, copies and exposed ports.

use std::collections::BTreeMap;

use super::binaries::repository;

/// One instruction, its keyword upper-cased.
pub(super) struct Instruction {
    pub(super) keyword: String,
    pub(super) rest: String,
}

pub(super) struct Dockerfile {
    /// Each stage's instructions, `FROM` first.
    pub(super) stages: Vec<Vec<Instruction>>,
    /// The runtime stage's `ENV`.
    pub(super) env: BTreeMap<String, String>,
}

impl Dockerfile {
    pub(super) fn read() -> Dockerfile {
        let text = std::fs::read_to_string(repository().join("Dockerfile")).unwrap();
        let mut lines = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(start) => {
                    current.push_str(start);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    lines.push(std::mem::take(&mut current));
                }
            }
        }
        let mut stages: Vec<Vec<Instruction>> = Vec::new();
        for line in lines {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let keyword = keyword.to_uppercase();
            if keyword == "FROM" {
                stages.push(Vec::new());
            }
            stages.last_mut().expect("FROM first").push(Instruction {
                keyword,
                rest: rest.trim().to_owned(),
            });
        }
        let mut env = BTreeMap::new();
        for Instruction { rest, .. } in stages.last().unwrap().iter().filter(|i| i.keyword == "ENV")
        {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.first().is_some_and(|word| word.contains('=')) {
                for word in words {
                    let (key, value) = word.split_once('=').unwrap();
                    env.insert(key.to_owned(), value.trim_matches('"').to_owned());
                }
            } else if let Some((key, value)) = rest.split_once(char::is_whitespace) {
                env.insert(key.to_owned(), value.trim().to_owned());
            }
        }
        Dockerfile { stages, env }
    }

    pub(super) fn runtime(&self) -> &[Instruction] {
        self.stages.last().unwrap()
    }

    /// The runtime stage's instructions `keyword`, in order.
    pub(super) fn all<'a>(&'a self, keyword: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let keyword = keyword.to_owned();
        self.runtime()
            .iter()
            .filter(move |instruction| instruction.keyword == keyword)
            .map(|instruction| instruction.rest.as_str())
    }

    pub(super) fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).last()
    }

    /// The runtime stage's user id, when numeric.
    pub(super) fn uid(&self) -> Option<u64> {
        self.last("USER")?.split(':').next()?.parse().ok()
    }

    /// (source, destination directory) of every file the runtime stage copies from a build stage.
    pub(super) fn copied(&self) -> Vec<(String, String)> {
        let mut copied = Vec::new();
        for rest in self.all("COPY") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if !words.iter().any(|word| word.starts_with("--from=")) {
                continue;
            }
            let paths: Vec<&str> = words
                .into_iter()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let (destination, sources) = paths.split_last().unwrap();
            copied.extend(
                sources
                    .iter()
                    .map(|source| ((*source).to_owned(), (*destination).to_owned())),
            );
        }
        copied
    }
}
