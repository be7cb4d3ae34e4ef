//! t130: the deployment files agree with the binary. The flags the Kubernetes manifests and
//! the systemd unit pass are flags of `mirrorkv --help`; the config example is a valid
//! config; every metric the Grafana dashboard and the Prometheus alerts name is served by a
//! node's /metrics; `mirrorkv completions` and `mirrorkv man` produce their formats.
//! (The files' own formats are checked by their tools: scripts/deploy-check.sh.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `--long-flag` words of `text`, without a value after `=`.
fn long_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || ['"', '\'', '[', ',', '`'].contains(&c))
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| flag.split('=').next().unwrap_or(flag))
        .filter(|flag| flag.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .map(|flag| format!("--{flag}"))
        .collect()
}

fn help() -> String {
    let (ok, stdout, stderr) = mirrorkv(&["--help"], None);
    assert!(ok, "mirrorkv --help: {stderr}");
    String::from_utf8(stdout).expect("help is text")
}

#[test]
fn t130_flags_of_the_manifests_and_the_unit_are_flags_of_the_binary() {
    let known = long_flags(&help());
    assert!(
        known.contains("--initial-cluster") && known.len() > 40,
        "{known:?}"
    );
    let mut checked = 0;
    for file in [
        "deploy/kubernetes/mirrorkv.yaml",
        "deploy/systemd/mirrorkv@.service",
    ] {
        // What the file runs, not what its comments say.
        let code: String = read(file)
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let passed = long_flags(&code);
        assert!(passed.len() >= 2, "{file} passes flags: {passed:?}");
        let unknown: Vec<_> = passed.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} passes flags mirrorkv does not have: {unknown:?}"
        );
        checked += passed.len();
    }
    assert!(checked >= 15, "{checked}");
    // The image's default command too (its JSON array form).
    let containerfile = read("deploy/Containerfile");
    let cmd = containerfile
        .lines()
        .find(|line| line.starts_with("CMD"))
        .expect("CMD");
    let unknown: Vec<_> = long_flags(cmd).difference(&known).cloned().collect();
    assert!(unknown.is_empty(), "deploy/Containerfile CMD: {unknown:?}");
}

#[test]
fn t130_the_config_example_is_a_valid_config() {
    let example = repo().join("deploy/systemd/node.toml.example");
    let known = long_flags(&help());
    // Every key, commented out or not, is a flag with dashes.
    for line in read("deploy/systemd/node.toml.example").lines() {
        let line = line.trim_start_matches(['#', ' ']);
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        let flag = format!("--{}", key.trim().replace('_', "-"));
        assert!(
            known.contains(&flag),
            "config key {key} is no flag ({flag})"
        );
    }
    let flags = mirrorkv_node::Flags::try_parse_from([
        "mirrorkv",
        "--config",
        example.to_str().expect("path"),
        "--data-dir",
        "/var/lib/mirrorkv/1",
    ])
    .expect("flags");
    let config = flags.resolve().expect("the example resolves");
    assert_eq!(config.id, 1);
    assert_eq!(config.api_addr, "10.0.0.1:7379");
}

#[tokio::test]
async fn t130_every_metric_of_the_dashboard_and_the_alerts_exists() {
    let cluster = Cluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let page = cluster.metrics(1).await;
    let served: BTreeSet<&str> = page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    for file in [
        "deploy/grafana/mirrorkv.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = read(file);
        let named: BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("mirrorkv_"))
            .collect();
        assert!(named.len() >= 5, "{file}: {named:?}");
        let missing: Vec<_> = named.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics no node serves: {missing:?}"
        );
    }
}

#[test]
fn t130_completions_and_the_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef mirrorkv"),
        ("fish", "complete -c mirrorkv"),
    ] {
        let (ok, stdout, stderr) = mirrorkv(&["completions", shell], None);
        assert!(ok, "completions {shell}: {stderr}");
        let script = String::from_utf8(stdout).expect("text");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(
            script.contains("initial-cluster") && script.contains("ctl"),
            "{shell}"
        );
    }
    let (ok, _, stderr) = mirrorkv(&["completions", "tcsh"], None);
    assert!(
        !ok && stderr.contains("tcsh"),
        "an unknown shell is refused: {stderr}"
    );
    let (ok, stdout, stderr) = mirrorkv(&["man"], None);
    assert!(ok, "man: {stderr}");
    let page = String::from_utf8(stdout).expect("roff");
    assert!(
        page.contains(".TH mirrorkv 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(
        page.contains("initial\\-cluster"),
        "the flags are in the page"
    );
}
