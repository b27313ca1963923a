//! The book under `docs/`: built with mdBook, and checked so that it cannot
//! drift from the code. A broken link or a stale anchor, a policy example
//! that `portguard check` refuses, or a command-line example naming a
//! subcommand or flag that does not exist fails `cargo xtask test`.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{run, workspace_root};

/// Builds the book into `target/book` and runs every check on it and on
/// README.md.
pub(crate) fn check(portguard: &Path) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = root.join("target/book");
    run(Command::new("mdbook").arg("build").arg(root.join("docs")).arg("--dest-dir").arg(&out))?;
    let mut problems = Vec::new();
    check_html_links(&out, &mut problems)?;
    let sources = markdown_sources(&root)?;
    for md in &sources {
        let text = fs::read_to_string(md).with_context(|| format!("read {}", md.display()))?;
        check_markdown_links(md, &text, &mut problems);
        check_examples(md, &text, portguard, &mut problems)?;
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("xtask: docs: {p}");
        }
        bail!("{} problem(s) in the documentation", problems.len());
    }
    eprintln!("xtask: docs: book built in {}, {} pages checked", out.display(), sources.len());
    Ok(())
}

/// README.md and every chapter of the book.
fn markdown_sources(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v = vec![root.join("README.md")];
    for e in fs::read_dir(root.join("docs/src"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "md") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Every relative `href` in the built HTML names a file that exists and,
/// with a fragment, an `id` in that file.
fn check_html_links(out: &Path, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let mut pages = Vec::new();
    collect_html(out, &mut pages)?;
    let mut ids: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for page in &pages {
        let html = fs::read_to_string(page)?;
        ids.insert(page.clone(), attr_values(&html, "id").into_iter().map(str::to_owned).collect());
    }
    for page in &pages {
        // mdBook's own navigation and theme files are not ours to check.
        if page.file_name().is_some_and(|n| n == "print.html" || n == "404.html" || n == "toc.html") {
            continue;
        }
        let html = fs::read_to_string(page)?;
        for href in attr_values(&html, "href") {
            if href.contains("://") || href.starts_with("mailto:") || href.starts_with("javascript:") {
                continue;
            }
            let (file, fragment) = href.split_once('#').unwrap_or((href, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                let t = page.parent().unwrap_or(out).join(file);
                if t.is_dir() { t.join("index.html") } else { t }
            };
            let target = normalize(&target);
            let rel = page.strip_prefix(out).unwrap_or(page).display().to_string();
            if !target.exists() {
                problems.push(format!("{rel}: link to {href}: no such file"));
                continue;
            }
            if !fragment.is_empty() && target.extension().is_some_and(|x| x == "html") {
                let known = ids.get(&target).is_some_and(|s| s.contains(fragment));
                if !known {
                    problems.push(format!("{rel}: link to {href}: no anchor #{fragment} there"));
                }
            }
        }
    }
    Ok(())
}

fn collect_html(dir: &Path, pages: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_html(&p, pages)?;
        } else if p.extension().is_some_and(|x| x == "html") {
            pages.push(normalize(&p));
        }
    }
    Ok(())
}

/// `a/b/../c` -> `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The values of `name="..."` attributes in `html`.
fn attr_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// Markdown links from README.md into the repository (the book is checked
/// as HTML): the file they name exists.
fn check_markdown_links(md: &Path, text: &str, problems: &mut Vec<String>) {
    let dir = md.parent().unwrap_or(Path::new("."));
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let link = &rest[..end];
        if link.contains("://") || link.starts_with('#') || link.starts_with("mailto:") || link.contains(' ')
        {
            continue;
        }
        let file = link.split_once('#').map_or(link, |(f, _)| f);
        if !file.is_empty() && !dir.join(file).exists() {
            problems.push(format!("{}: link to {link}: no such file", md.display()));
        }
    }
}

/// Fenced examples: a ```toml block holding a whole policy (it has a
/// `[[guard]]`) must pass `portguard check`; a shell line running
/// `portguard SUBCOMMAND --flag ...` must name a subcommand and flags that
/// exist.
fn check_examples(md: &Path, text: &str, portguard: &Path, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let mut help_cache: HashMap<String, Option<String>> = HashMap::new();
    for (line_no, lang, block) in fenced_blocks(text) {
        let place = format!("{}:{line_no}", md.display());
        if lang == "toml" && block.contains("[[guard]]") && !block.contains("# fragment") {
            let file = std::env::temp_dir().join(format!("portguard-docs-{}.toml", std::process::id()));
            fs::write(&file, &block)?;
            let out = Command::new(portguard).arg("check").arg(&file).output()?;
            let _ = fs::remove_file(&file);
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                problems
                    .push(format!("{place}: policy example refused by `portguard check`: {}", err.trim()));
            }
        }
        if matches!(lang.as_str(), "sh" | "bash" | "console" | "shell") {
            for line in block.lines() {
                check_command_line(&place, line, portguard, &mut help_cache, problems);
            }
        }
    }
    Ok(())
}

fn check_command_line(
    place: &str,
    line: &str,
    portguard: &Path,
    help_cache: &mut HashMap<String, Option<String>>,
    problems: &mut Vec<String>,
) {
    let line = line.trim_start_matches("$ ").trim_start_matches("sudo ").trim();
    let Some(rest) = line.strip_prefix("portguard ") else { return };
    let words: Vec<&str> =
        rest.split_whitespace().take_while(|w| !matches!(*w, "|" | ">" | "&&" | "#")).collect();
    let Some(sub) = words.first().filter(|w| !w.starts_with('-')) else { return };
    let help = help_cache
        .entry((*sub).to_owned())
        .or_insert_with(|| {
            let out = Command::new(portguard).arg(sub).arg("--help").output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .clone();
    let Some(help) = help else {
        problems.push(format!("{place}: `portguard {sub}`: no such subcommand"));
        return;
    };
    for w in &words[1..] {
        if let Some(flag) = w.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or(flag);
            if !help.contains(&format!("--{flag}")) {
                problems.push(format!("{place}: `portguard {sub} --{flag}`: no such flag"));
            }
        }
    }
}

/// (line of the opening fence, language, body) of each fenced block.
fn fenced_blocks(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match open.take() {
                Some(block) => out.push(block),
                None => open = Some((i + 1, info.trim().to_owned(), String::new())),
            }
        } else if let Some((_, _, body)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}
