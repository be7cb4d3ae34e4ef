use super::*;

/// `approx_bytes` bounds batches against the frame limit, so it must not undercount.
#[test]
fn approx_bytes_covers_the_encoded_size() {
    let put = |key: &str, value_bytes: usize| Command::Put {
        key: key.into(),
        value: vec![7; value_bytes],
        precondition: Precondition::ModIndex(u64::MAX),
    };
    let txn = Command::Txn(Txn {
        compare: vec![Compare {
            key: "k".repeat(300),
            target: CompareTarget::Value(vec![1; 70_000]),
        }],
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: vec![2; 200],
            },
            TxnOp::Delete { key: "b".into() },
        ],
        failure: vec![TxnOp::Get {
            key: "c".repeat(20_000),
        }],
    });
    let idempotent = Command::Idempotent {
        key: "writer-1".into(),
        issued_at_ms: u64::MAX,
        window_ms: u64::MAX,
        command: Box::new(put("x", 5)),
    };
    let commands = vec![
        put("", 0),
        put("key", 100),
        put(&"k".repeat(16_384), 1 << 20),
        Command::Delete {
            key: "gone".into(),
            precondition: Precondition::Absent,
        },
        Command::Barrier,
        txn.clone(),
        idempotent.clone(),
        Command::Batch(vec![put("a", 100), txn, idempotent]),
        Command::LeaseGrant {
            ttl_ms: u64::MAX,
            max_leases: u64::MAX,
        },
        Command::LeaseRevoke { id: u64::MAX },
        Command::LeaseExpire {
            ids: vec![u64::MAX; 1000],
        },
        Command::PutLeased {
            key: "k".repeat(300),
            value: vec![1; 500],
            precondition: Precondition::ModIndex(u64::MAX),
            lease: LeaseAttach {
                id: u64::MAX,
                max_keys: u64::MAX,
            },
        },
        Command::Txn(Txn {
            compare: Vec::new(),
            success: vec![TxnOp::PutLeased {
                key: "k".into(),
                value: vec![3; 40],
                lease: LeaseAttach {
                    id: u64::MAX,
                    max_keys: u64::MAX,
                },
            }],
            failure: Vec::new(),
        }),
    ];
    for command in commands {
        let encoded = crate::codec::encode(&command).unwrap().len();
        assert!(
            encoded <= command.approx_bytes(),
            "{encoded} encoded bytes > approx {} for {command:?}",
            command.approx_bytes()
        );
    }
}

/// Thousands of nested commands in a few kilobytes: refused as malformed, not a stack
/// overflow (which aborted the process before the depth limit).
#[test]
fn deeply_nested_commands_are_refused_not_a_stack_overflow() {
    // Idempotent is variant 4: empty key, issued_at 0, window 0, then the inner command.
    let mut bytes = Vec::new();
    for _ in 0..1_000_000 {
        bytes.extend_from_slice(&[4, 0, 0, 0]);
    }
    bytes.push(3); // Barrier
    let decoded = std::thread::spawn(move || crate::codec::decode::<Command>(&bytes))
        .join()
        .expect("decoding does not overflow the stack");
    assert!(decoded.is_err());
    // Batches nest through Vec: variant 5, one element.
    let mut bytes = Vec::new();
    for _ in 0..1_000_000 {
        bytes.extend_from_slice(&[5, 1]);
    }
    bytes.push(3);
    let decoded = std::thread::spawn(move || crate::codec::decode::<Command>(&bytes))
        .join()
        .expect("decoding does not overflow the stack");
    assert!(decoded.is_err());
    // Every legitimate shape still round-trips, and the depth count starts over after
    // an error.
    let nested = Command::Batch(vec![Command::Idempotent {
        key: "k".into(),
        issued_at_ms: 1,
        window_ms: 2,
        command: Box::new(Command::Txn(Txn::default())),
    }]);
    let encoded = crate::codec::encode(&nested).unwrap();
    assert_eq!(crate::codec::decode::<Command>(&encoded).unwrap(), nested);
}

/// A grant's TTL is checked where it enters a node (a peer could send any number); an expiry
/// is the leader's own and never comes from outside.
#[test]
fn lease_commands_from_outside_are_checked() {
    let limits = CommandLimits {
        max_key_bytes: 16,
        max_value_bytes: 16,
        max_txn_ops: 4,
        max_idempotency_key_bytes: 16,
    };
    let grant = |ttl_ms| Command::LeaseGrant {
        ttl_ms,
        max_leases: 10,
    };
    assert!(grant(2000).validate(&limits).is_ok());
    assert!(grant(MAX_LEASE_TTL_MS).validate(&limits).is_ok());
    for ttl_ms in [0, MAX_LEASE_TTL_MS + 1, u64::MAX] {
        assert!(grant(ttl_ms).validate(&limits).is_err(), "{ttl_ms}");
    }
    assert!(Command::LeaseExpire { ids: vec![256] }
        .validate(&limits)
        .is_err());
    let idempotent_expire = Command::Idempotent {
        key: "k".into(),
        issued_at_ms: 0,
        window_ms: 0,
        command: Box::new(Command::LeaseExpire { ids: vec![256] }),
    };
    assert!(idempotent_expire.validate(&limits).is_err());
    let long_key = Command::PutLeased {
        key: "k".repeat(17),
        value: Vec::new(),
        precondition: Precondition::None,
        lease: LeaseAttach {
            id: 256,
            max_keys: 1,
        },
    };
    assert!(long_key.validate(&limits).is_err());
}
