//! The configuration's tests: defaults, precedence of flags over the file, and checks.

use super::*;

/// A config file with the required settings, then `extra` (TOML lines).
fn file_with(extra: &str) -> Flags {
    toml::from_str(&format!(
        "id = 1\ndata_dir = \"/d\"\napi_addr = \"a:1\"\nraft_addr = \"r:1\"\n{extra}"
    ))
    .unwrap()
}

#[test]
fn timeouts_and_sizes_are_checked_against_each_other() {
    let resolve = |extra: &str| {
        Flags::default()
            .or(file_with(extra))
            .resolve()
            .map_err(|e| e.to_string())
    };
    assert!(resolve("").is_ok(), "the defaults fit together");
    let error = resolve("request_timeout_ms = 18446744073709551615").unwrap_err();
    assert!(
        error.contains("request_timeout_ms must be between 1 and 3600000"),
        "{error}"
    );
    assert!(resolve("request_timeout_ms = 0").is_err());
    assert!(resolve("request_timeout_ms = 3600000").is_ok());
    let error = resolve("max_body_bytes = 8388608").unwrap_err();
    assert!(
        error.contains("raise max_frame_bytes or lower max_body_bytes"),
        "{error}"
    );
    assert!(resolve("max_body_bytes = 8388608\nmax_frame_bytes = 268435456").is_ok());
    let error = resolve("max_value_bytes = 4194304").unwrap_err();
    assert!(error.contains("must be at most max_body_bytes"), "{error}");
}

#[test]
fn parses_initial_cluster_and_rejects_bad_specs() {
    let members = parse_initial_cluster("1=127.0.0.1:7001/127.0.0.1:8001, 2=h:2/h:3").unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[&1].raft_addr, "127.0.0.1:7001");
    assert_eq!(members[&2].api_addr, "h:3");
    assert!(parse_initial_cluster("1=a").is_err());
    assert!(parse_initial_cluster("x=a/b").is_err());
    assert!(parse_initial_cluster("1=a/b,1=c/d").is_err());
    assert!(parse_initial_cluster("0=a/b").is_err());
}

#[test]
fn flags_take_precedence_over_the_file() {
    let file: Flags = toml::from_str("id = 3\ndata_dir = \"/d\"\napi_addr = \"a:1\"\nraft_addr = \"r:1\"\nrequest_timeout_ms = 900").unwrap();
    let flags = Flags {
        id: Some(7),
        ..Flags::default()
    };
    let config = flags.or(file).resolve().unwrap();
    assert_eq!(config.id, 7);
    assert_eq!(config.api.request_timeout_ms, 900);
    assert!(toml::from_str::<Flags>("no_such_setting = 1").is_err());
}

#[test]
fn key_index_mib_defaults_to_128_and_is_bounded() {
    let resolve = |extra: &str| Flags::default().or(file_with(extra)).resolve();
    assert_eq!(resolve("").unwrap().key_index_mib, 128);
    assert_eq!(resolve("key_index_mib = 0").unwrap().key_index_mib, 0);
    let error = resolve("key_index_mib = 1048577").unwrap_err().to_string();
    assert!(
        error.contains("key_index_mib must be at most 1048576 (MiB)"),
        "{error}"
    );
}

#[test]
fn every_default_is_shown_in_help_and_is_what_resolve_uses() {
    let mut command = with_defaults_in_help(<Flags as clap::CommandFactory>::command());
    let help = command.render_help().to_string();
    let hidden: Vec<String> = command
        .get_arguments()
        .filter(|arg| arg.is_hide_set())
        .map(|arg| arg.get_id().to_string())
        .collect();
    let line_of = |flag: &str| {
        let at = help
            .find(&format!("--{flag} "))
            .unwrap_or_else(|| panic!("--{flag} in help:\n{help}"));
        // A flag's help runs until the next flag.
        let rest = &help[at..];
        rest[..rest[2..].find("\n  -").map_or(rest.len(), |end| end + 2)].to_string()
    };
    let defaults = serde_json::to_value(Flags::defaults()).unwrap();
    let mut shown = 0;
    for (name, value) in defaults.as_object().unwrap() {
        if value.is_null() || value.is_array() || hidden.contains(name) {
            continue;
        }
        let value = value.as_str().map_or(value.to_string(), str::to_string);
        let text = line_of(&name.replace('_', "-"));
        assert!(text.contains(&format!("[default: {value}]")), "{text}");
        shown += 1;
    }
    assert!(shown >= 25, "only {shown} defaults shown");
    // What help shows is what a node gets when nothing else sets it.
    let config = toml::from_str::<Flags>("id = 1\ndata_dir = \"/d\"")
        .unwrap()
        .resolve()
        .unwrap();
    let d = Flags::defaults();
    let (api, coordinator, net) = (&config.api, &config.coordinator, &config.net);
    let resolved = Flags {
        join_timeout_ms: Some(config.join_timeout_ms),
        promote_max_lag_entries: Some(coordinator.promote_max_lag_entries),
        log_format: Some(match config.log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        }),
        max_key_bytes: Some(api.max_key_bytes),
        max_value_bytes: Some(api.max_value_bytes),
        max_body_bytes: Some(api.max_body_bytes),
        max_range_page_bytes: Some(api.max_range_page_bytes),
        max_connections: Some(api.max_connections),
        max_in_flight_requests: Some(api.max_in_flight_requests),
        request_timeout_ms: Some(api.request_timeout_ms),
        idle_timeout_ms: Some(api.idle_timeout_ms),
        header_read_timeout_ms: Some(api.header_read_timeout_ms),
        body_read_timeout_ms: Some(api.body_read_timeout_ms),
        write_timeout_ms: Some(api.write_timeout_ms),
        heartbeat_interval_ms: Some(config.heartbeat_interval_ms),
        election_timeout_min_ms: Some(config.election_timeout_min_ms),
        election_timeout_max_ms: Some(config.election_timeout_max_ms),
        idempotency_window_s: Some(coordinator.idempotency_window_s),
        snapshot_threshold_entries: Some(config.snapshot_threshold_entries),
        snapshot_chunk_bytes: Some(config.snapshot_chunk_bytes),
        max_frame_bytes: Some(net.max_frame_bytes),
        raft_frame_timeout_ms: Some(net.frame_read_timeout_ms),
        raft_idle_timeout_ms: Some(net.idle_timeout_ms),
        storage_memory_mib: Some(config.storage_memory_mib),
        key_index_mib: Some(config.key_index_mib),
        watch_history_entries: Some(config.watch_history_entries),
        watch_progress_ms: Some(config.watch.progress_ms),
        watch_buffer_events: Some(config.watch.buffer_events),
        max_watchers: Some(config.watch.max_watchers),
        max_wait_s: Some(config.watch.max_wait_s),
        min_lease_ttl_s: Some(config.leases.min_ttl_s),
        max_leases: Some(config.leases.max_leases),
        max_keys_per_lease: Some(config.leases.max_keys_per_lease),
        fault_log_sync_delay_ms: Some(config.fault_log_sync_delay_ms),
        fault_lease_early_ms: Some(config.leases.fault_early_ms),
        api_addr: Some(config.api_addr.clone()),
        raft_addr: Some(config.raft_addr.clone()),
        tls_handshake_timeout_ms: Some(config.tls.handshake_timeout_ms),
        auth: Some(api.auth.enabled),
        metrics_public: Some(api.auth.metrics_public),
        ..Flags::default()
    };
    assert_eq!(net.handshake_timeout_ms, config.tls.handshake_timeout_ms);
    // Every default, compared whole (a default added to one side only shows up here).
    assert_eq!(
        serde_json::to_value(&resolved).unwrap(),
        serde_json::to_value(&d).unwrap()
    );
    assert_eq!(config.lease_margin_ms, config.election_timeout_max_ms / 4);
}

#[test]
fn a_file_value_wins_over_a_default_and_a_flag_over_both() {
    let file = file_with("heartbeat_interval_ms = 50\nsnapshot_threshold_entries = 7");
    let flags = Flags {
        snapshot_threshold_entries: Some(9),
        ..Flags::default()
    };
    let config = flags.or(file).resolve().unwrap();
    assert_eq!(config.heartbeat_interval_ms, 50);
    assert_eq!(config.snapshot_threshold_entries, 9);
    assert_eq!(config.election_timeout_max_ms, 1000);
}

#[test]
fn cluster_id_is_stable_and_depends_on_members() {
    let a = parse_initial_cluster("1=a/b,2=c/d").unwrap();
    let b = parse_initial_cluster("2=c/d,1=a/b").unwrap();
    let c = parse_initial_cluster("1=a/b").unwrap();
    assert_eq!(cluster_id(&a), cluster_id(&b));
    assert_ne!(cluster_id(&a), cluster_id(&c));
}

#[test]
fn nodes_listen_on_loopback_unless_told() {
    let config = toml::from_str::<Flags>("id = 1\ndata_dir = \"/d\"")
        .unwrap()
        .resolve()
        .unwrap();
    for addr in [&config.api_addr, &config.raft_addr] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr} is not loopback");
    }
    assert_eq!(
        config.tls,
        crate::tls::TlsSettings {
            handshake_timeout_ms: 5000,
            ..Default::default()
        }
    );
}

#[test]
fn tls_files_come_in_whole_sets() {
    let resolve = |extra: &str| {
        Flags::default()
            .or(file_with(extra))
            .resolve()
            .map(|config| config.tls)
            .map_err(|e| e.to_string())
    };
    let error = resolve("tls_cert = \"c.pem\"").unwrap_err();
    assert!(
        error.contains("--tls-cert and --tls-key go together"),
        "{error}"
    );
    let error = resolve("tls_client_ca = \"ca.pem\"").unwrap_err();
    assert!(
        error.contains("--tls-client-ca needs --tls-cert"),
        "{error}"
    );
    let error = resolve("peer_cert = \"c.pem\"\npeer_key = \"k.pem\"").unwrap_err();
    assert!(
        error.contains("all of --peer-cert, --peer-key and --peer-ca"),
        "{error}"
    );
    let error = resolve("tls_handshake_timeout_ms = 0").unwrap_err();
    assert!(
        error.contains("tls_handshake_timeout_ms must be between"),
        "{error}"
    );
    let tls = resolve(
        "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\npeer_cert = \"c.pem\"\npeer_key = \"k.pem\"\npeer_ca = \"ca.pem\"",
    )
    .unwrap();
    assert!(tls.api.is_some_and(|api| api.client_ca.is_none()));
    assert_eq!(tls.peer.map(|peer| peer.ca), Some("ca.pem".into()));
}

#[test]
fn auth_needs_a_long_bootstrap_token_and_its_settings_need_auth() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let long = token_file("long", &format!("{}\n", "ab12".repeat(8)));
    let short = token_file("short", "tooshort");
    let spaced = token_file("spaced", &format!("{} {}", "a".repeat(20), "b".repeat(20)));
    let resolve = |extra: String| {
        Flags::default()
            .or(file_with(&extra))
            .resolve()
            .map_err(|e| e.to_string())
    };
    let config = resolve(format!("auth = true\nauth_bootstrap_token_file = {long:?}")).unwrap();
    assert!(config.api.auth.enabled && !config.api.auth.metrics_public);
    // The file's text, trimmed, is the token: its hash is kept, and its text for --join.
    assert_eq!(
        config.api.auth.bootstrap_token_sha256,
        Some(mirrorkv_api::auth::token_sha256(&"ab12".repeat(8)))
    );
    assert_eq!(config.bootstrap_token.map(|t| t.0), Some("ab12".repeat(8)));
    for (extra, error) in [
        (
            format!("auth_bootstrap_token_file = {long:?}"),
            "needs --auth",
        ),
        ("metrics_public = true".to_string(), "needs --auth"),
        (
            format!("auth = true\nauth_bootstrap_token_file = {short:?}"),
            "32 to",
        ),
        (
            format!("auth = true\nauth_bootstrap_token_file = {spaced:?}"),
            "without spaces",
        ),
        (
            "auth = true\nauth_bootstrap_token_file = \"/no/such/file\"".to_string(),
            "reading the bootstrap token",
        ),
    ] {
        let got = resolve(extra.clone()).unwrap_err();
        assert!(got.contains(error), "{extra}: {got}");
    }
    let open = resolve(String::new()).unwrap();
    assert!(!open.api.auth.enabled && open.bootstrap_token.is_none());
    // A token never shows in the configuration's Debug (which a node may log).
    let debug = format!(
        "{:?}",
        resolve(format!("auth = true\nauth_bootstrap_token_file = {long:?}")).unwrap()
    );
    assert!(!debug.contains("ab12ab12"), "{debug}");
}

/// Any value for any setting, from a file (flags and environment variables take the same
/// path): the configuration resolves or says what is wrong, never panics (no overflow in the
/// checks that combine settings). Seeded: the seed is printed, `PROPTEST_RNG_SEED=<seed>`
/// replays a run.
#[test]
fn any_value_of_any_setting_resolves_or_is_refused() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let names: Vec<String> = match serde_json::to_value(Flags::defaults()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => panic!("defaults serialize to a map"),
    };
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()).rotate_left(17) ^ 0xc0f1);
    println!("config fuzz seed: {seed} (replay with PROPTEST_RNG_SEED={seed})");
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        Just("0".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:=/,\\.]{0,20}".prop_map(|s| format!("{s:?}")),
    ];
    let settings = proptest::collection::vec((proptest::sample::select(names), value), 0..12);
    let config = Config {
        cases: 3000,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new(config)
        .run(&settings, |settings| {
            let text: String = settings
                .iter()
                .map(|(name, value)| format!("{name} = {value}\n"))
                .collect();
            // A key twice is a TOML error; anything else is the configuration's to judge.
            if let Ok(file) = toml::from_str::<Flags>(&format!("id = 1\ndata_dir = \"/d\"\n{text}"))
            {
                let _ = file.resolve();
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}
