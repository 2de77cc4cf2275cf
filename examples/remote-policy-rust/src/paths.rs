//! Finding paths in tool-call arguments that lie outside the allowed directory.
//!
//! Every string in the arguments is cut into words (at whitespace, quotes and shell operators);
//! a word is a path when it is absolute (`/etc/passwd`), starts at a home directory (`~/.ssh`)
//! or climbs with `..` (`../secrets`). Relative paths are taken from the allowed directory,
//! and `..` is resolved lexically (symlinks are not followed: this runs next to the model, not
//! on the machine that runs the tool).

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

/// The paths named in `arguments` (a JSON text; a text that is not JSON is searched as one
/// string) that fall outside `allowed`, in order of appearance, without repeats.
pub fn paths_outside(allowed: &Path, arguments: &str) -> Vec<String> {
    let mut strings = Vec::new();
    match serde_json::from_str::<Value>(arguments) {
        Ok(value) => collect_strings(&value, &mut strings),
        Err(_) => strings.push(arguments.to_owned()),
    }
    let mut outside = Vec::new();
    for text in &strings {
        for word in text.split(is_separator) {
            if is_path(word)
                && !is_inside(allowed, word)
                && !outside.iter().any(|seen| seen == word)
            {
                outside.push(word.to_owned());
            }
        }
    }
    outside
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Object(fields) => fields.values().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || "\"'`;|&<>(){}=,".contains(c)
}

fn is_path(word: &str) -> bool {
    word.starts_with('/') || word.starts_with('~') || word.split('/').any(|segment| segment == "..")
}

fn is_inside(allowed: &Path, word: &str) -> bool {
    if word.starts_with('~') {
        return false;
    }
    let path = Path::new(word);
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        allowed.join(path)
    };
    match normalize(&full) {
        Some(full) => full.starts_with(normalize_dir(allowed)),
        None => false,
    }
}

/// Resolves `.` and `..` without touching the file system; `None` when `..` climbs above `/`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
        }
    }
    Some(out)
}

fn normalize_dir(allowed: &Path) -> PathBuf {
    normalize(allowed).unwrap_or_else(|| allowed.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside(arguments: &str) -> Vec<String> {
        paths_outside(Path::new("/workspace"), arguments)
    }

    #[test]
    fn finds_absolute_home_and_climbing_paths() {
        assert_eq!(
            outside(r#"{"command":"ls -la /tmp && echo \"done\""}"#),
            ["/tmp"]
        );
        assert_eq!(outside(r#"{"path":"~/.ssh/id_rsa"}"#), ["~/.ssh/id_rsa"]);
        assert_eq!(
            outside(r#"{"path":"src/../../etc/passwd"}"#),
            ["src/../../etc/passwd"]
        );
        assert_eq!(
            outside(r#"{"args":["--out=/etc/x", "cat </root/a"]}"#),
            ["/etc/x", "/root/a"]
        );
    }

    #[test]
    fn allows_paths_inside_and_plain_words() {
        assert!(outside(r#"{"city":"Paris"}"#).is_empty());
        assert!(outside(r#"{"path":"/workspace/src/main.rs"}"#).is_empty());
        assert!(outside(r#"{"path":"src/../README.md","n":3}"#).is_empty());
        assert!(outside(r#"{"url":"https://example.com/a/b"}"#).is_empty());
        // `/workspace-other` is not inside `/workspace`.
        assert_eq!(
            outside(r#"{"path":"/workspace-other/x"}"#),
            ["/workspace-other/x"]
        );
        assert_eq!(
            outside(r#"{"path":"/workspace/../etc"}"#),
            ["/workspace/../etc"]
        );
    }

    #[test]
    fn arguments_that_are_not_json_are_searched_whole() {
        assert_eq!(outside("{\"command\": \"cat /etc/pa"), ["/etc/pa"]);
    }
}
