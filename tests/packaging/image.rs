//! docker/Dockerfile: the build line scripts/test runs, what the build stage copies, and how the run stage
//! starts, listens and checks its health.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser as _;

use redsplit::config::{Cli, Command, Config};

use crate::{config_of, docker_dir, read};

#[test]
fn dockerfile_builds_the_redsplit_binary_locked_and_in_release() {
    let df = dockerfile();
    let builds: Vec<&Instruction> = df
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.starts_with("cargo build"))
        .collect();
    assert_eq!(builds.len(), 1, "one `RUN cargo build` line expected");
    let build = builds[0];
    // scripts/test runs this line as it stands: one plain command, no shell around it.
    assert!(
        !build.args.contains(['&', ';', '|', '$', '`']),
        "the build line must be a single command: {}",
        build.args
    );
    let argv: Vec<&str> = build.args.split_whitespace().collect();
    assert!(argv.contains(&"--locked"), "not --locked: {}", build.args);
    assert!(argv.contains(&"--release"), "not --release: {}", build.args);
    let bin = argv
        .windows(2)
        .find(|w| w[0] == "--bin")
        .map(|w| w[1])
        .or_else(|| argv.iter().find_map(|a| a.strip_prefix("--bin=")));
    assert_eq!(
        bin,
        Some("redsplit"),
        "does not build --bin redsplit: {}",
        build.args
    );
    assert!(
        !argv
            .iter()
            .any(|a| a.starts_with("--target") || a.starts_with("--profile")),
        "the binary must land in target/release: {}",
        build.args
    );

    // The run stage copies exactly that binary out of the build stage.
    let workdir = df
        .iter()
        .rfind(|i| i.stage == build.stage && i.keyword == "WORKDIR" && i.line < build.line)
        .map_or("/", |i| i.args.as_str());
    let built = format!("{}/target/release/redsplit", workdir.trim_end_matches('/'));
    let last = last_stage(&df);
    let from = format!("--from={}", stage_name(&df, build.stage));
    assert!(
        df.iter().any(|i| i.stage == last
            && i.keyword == "COPY"
            && i.args.split_whitespace().any(|a| a == from)
            && i.args.split_whitespace().any(|a| a == built)),
        "the run stage does not COPY {from} {built}"
    );
}

#[test]
fn dockerfile_build_stage_copies_every_file_the_manifest_names() {
    let df = dockerfile();
    let build_stage = df
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.starts_with("cargo build"))
        .expect("a `RUN cargo build` line")
        .stage;
    let copied: Vec<String> = df
        .iter()
        .filter(|i| i.stage == build_stage && i.keyword == "COPY")
        .flat_map(|i| {
            let words: Vec<&str> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let sources = &words[..words.len().saturating_sub(1)];
            sources
                .iter()
                .map(|s| s.trim_start_matches("./").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for needed in manifest_paths() {
        assert!(
            copied.iter().any(|c| c == "."
                || c.is_empty()
                || needed == *c
                || needed.starts_with(&format!("{c}/"))),
            "cargo needs {needed}, which the build stage does not COPY (copies {copied:?})"
        );
    }
}

#[test]
fn container_runs_as_non_root_exposes_its_ports_and_health_checks_its_admin_port() {
    let df = dockerfile();
    let last = last_stage(&df);
    let user = df
        .iter()
        .rfind(|i| i.stage == last && i.keyword == "USER")
        .expect("the run stage sets USER");
    let uid = user.args.split(':').next().unwrap_or_default();
    // Numeric, so that Kubernetes' runAsNonRoot can check it without the image's /etc/passwd.
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER must be a non-zero numeric UID, got {}",
        user.args
    );

    let config = config_of(&image_argv(None, None));
    assert!(
        config.listen.ip().is_unspecified(),
        "clients cannot reach {}",
        config.listen
    );
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "nothing can reach {}",
        config.admin_listen
    );
    let exposed: BTreeSet<u16> = df
        .iter()
        .filter(|i| i.stage == last && i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|p| p.split('/').next().and_then(|p| p.parse().ok()))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([config.listen.port(), config.admin_listen.port()])
    );

    let health = df
        .iter()
        .find(|i| i.stage == last && i.keyword == "HEALTHCHECK")
        .expect("the run stage has a HEALTHCHECK");
    let (_, cmd) = health
        .args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {}", health.args));
    let argv: Vec<String> = serde_json::from_str(cmd.trim())
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not exec form ({e}): {cmd}"));
    assert_eq!(
        argv.first().map(String::as_str),
        Some("redsplit"),
        "{argv:?}"
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        matches!(cli.command, Some(Command::Health)),
        "{argv:?} is not `redsplit health`"
    );
    let asked = Config::load(None, cli.flags).expect("health check flags are valid");
    assert_eq!(
        asked.admin_listen.port(),
        config.admin_listen.port(),
        "the health check asks another admin port than the ENTRYPOINT binds"
    );
}

#[test]
fn arguments_after_the_image_name_can_move_its_listeners() {
    let config = config_of(&image_argv(
        None,
        Some(
            ["--listen", "0.0.0.0:7000", "--primary", "redis:6379"]
                .map(String::from)
                .into(),
        ),
    ));
    assert_eq!(config.listen.port(), 7000);
}

#[test]
fn image_tags_are_pinned_and_the_toolchain_is_the_manifests() {
    let df = dockerfile();
    let manifest: toml::Table = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml parses");
    let rust_version = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    for from in df.iter().filter(|i| i.keyword == "FROM") {
        let image = from.args.split_whitespace().next().unwrap_or_default();
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("latest");
        assert!(
            tag.starts_with(|c: char| c.is_ascii_digit()) && tag.contains('.'),
            "image {image} is not pinned to a version"
        );
        if image.starts_with("rust:") {
            assert!(
                tag.starts_with(rust_version),
                "the build image {image} is not the toolchain of rust-version {rust_version}"
            );
        }
    }
}

/// One Dockerfile instruction, continuation lines joined and comments dropped.
#[derive(Debug)]
struct Instruction {
    /// Index of its build stage (each FROM opens one).
    stage: usize,
    /// Index among all instructions.
    line: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read(&docker_dir().join("Dockerfile"));
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut stage = 0;
    for raw in text.lines() {
        let trimmed = raw.trim();
        // Comments and blank lines are dropped, also inside a continued instruction, as Docker does.
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                logical.push_str(part);
                logical.push(' ');
            }
            None => {
                logical.push_str(trimmed);
                let joined = std::mem::take(&mut logical);
                let (keyword, args) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                let keyword = keyword.to_ascii_uppercase();
                if keyword == "FROM" && !out.is_empty() {
                    stage += 1;
                }
                let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push(Instruction {
                    stage,
                    line: out.len(),
                    keyword,
                    args,
                });
            }
        }
    }
    out
}

fn last_stage(df: &[Instruction]) -> usize {
    df.last().map_or(0, |i| i.stage)
}

/// The name a stage is referred to by in `COPY --from`: its `AS` name, else its index.
fn stage_name(df: &[Instruction], stage: usize) -> String {
    let from = df
        .iter()
        .find(|i| i.stage == stage && i.keyword == "FROM")
        .expect("every stage opens with FROM");
    let words: Vec<&str> = from.args.split_whitespace().collect();
    match words.iter().position(|w| w.eq_ignore_ascii_case("as")) {
        Some(p) => words
            .get(p + 1)
            .map_or(stage.to_string(), |n| n.to_string()),
        None => stage.to_string(),
    }
}

/// The exec-form argument of the run stage's last `keyword` (ENTRYPOINT or CMD).
fn exec_form(df: &[Instruction], keyword: &str) -> Vec<String> {
    let last = last_stage(df);
    let i = df
        .iter()
        .rfind(|i| i.stage == last && i.keyword == keyword)
        .unwrap_or_else(|| panic!("the run stage has no {keyword}"));
    serde_json::from_str(&i.args)
        .unwrap_or_else(|e| panic!("{keyword} is not exec form ({e}): {}", i.args))
}

/// The argv a container of this image runs. An overridden entrypoint (compose `entrypoint`, Kubernetes
/// `command`) also drops the image's CMD; overridden arguments (compose `command`, Kubernetes `args`)
/// replace the CMD.
pub(crate) fn image_argv(
    entrypoint: Option<Vec<String>>,
    args: Option<Vec<String>>,
) -> Vec<String> {
    let df = dockerfile();
    let overridden = entrypoint.is_some();
    let mut argv = entrypoint.unwrap_or_else(|| exec_form(&df, "ENTRYPOINT"));
    match args {
        Some(args) => argv.extend(args),
        None if !overridden => argv.extend(exec_form(&df, "CMD")),
        None => {}
    }
    argv
}

/// Files cargo reads to build the crate: manifest, lock file and every target the manifest names.
fn manifest_paths() -> Vec<String> {
    let manifest: toml::Table = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml parses");
    let mut out = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    let path_of = |t: &toml::Value, dir: &str| {
        t.get("path")
            .and_then(|p| p.as_str())
            .map(str::to_string)
            .or_else(|| {
                t.get("name")
                    .and_then(|n| n.as_str())
                    .map(|n| format!("{dir}/{n}.rs"))
            })
    };
    if let Some(lib) = manifest.get("lib") {
        out.push(path_of(lib, "src").unwrap_or_else(|| "src/lib.rs".into()));
    }
    for (section, dir) in [
        ("bin", "src/bin"),
        ("test", "tests"),
        ("bench", "benches"),
        ("example", "examples"),
    ] {
        for target in manifest
            .get(section)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            out.extend(path_of(target, dir));
        }
    }
    if let Some(build) = manifest["package"].get("build").and_then(|b| b.as_str()) {
        out.push(build.to_string());
    }
    out
}
