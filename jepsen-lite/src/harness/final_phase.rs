//! The final phase of a register, set or bank run: everything healed, read back linearizably
//! and judged.

use super::*;

/// What the final phase reads.
pub(super) struct FinalState<'a> {
    pub(super) apis: &'a [String],
    pub(super) recorder: &'a Recorder,
    pub(super) set_tally: &'a Mutex<SetTally>,
    pub(super) bank_tally: &'a Mutex<BankTally>,
    pub(super) accounts: u64,
    /// HTTPS, for a secure cluster.
    pub(super) tls: &'a crate::cluster::ClientAccess,
}

/// The final phase, everything healed: read everything back linearizably and judge the run,
/// with the checker (register) or the workload's invariant (set, bank).
pub(super) async fn final_check(
    options: &TestOptions,
    state: &FinalState<'_>,
) -> Result<(Option<CheckResult>, Option<InvariantReport>), ClusterError> {
    let FinalState {
        apis,
        recorder,
        set_tally,
        bank_tally,
        accounts,
        tls,
    } = *state;
    // As patient as the cluster fixture's own requests: the cluster has just healed.
    let reader = workloads::node_client(
        &apis[0],
        Duration::from_millis(FINAL_READ_TIMEOUT_MS),
        "linearizable",
        tls,
    )
    .map_err(ClusterError::Misuse)?;
    Ok(match options.workload {
        Workload::Register => {
            let keys: std::collections::BTreeSet<String> = recorder
                .events
                .lock()
                .expect("lock")
                .iter()
                .map(|e| e.key.clone())
                .collect();
            let final_process = 1_000_000;
            for key in &keys {
                recorder.record(event(
                    final_process,
                    EventType::Invoke,
                    key,
                    &Input::Read,
                    None,
                ));
                match run_op(&reader, key, &Input::Read).await {
                    Ended::Ok(output) => recorder.record(event(
                        final_process,
                        EventType::Ok,
                        key,
                        &Input::Read,
                        Some(output),
                    )),
                    _ => recorder.record(event(
                        final_process,
                        EventType::Fail,
                        key,
                        &Input::Read,
                        None,
                    )),
                }
            }
            let history = History {
                events: recorder.events.lock().expect("lock").clone(),
            };
            let operations = history.operations().map_err(|e| {
                ClusterError::Misuse(format!("the recorded history does not pair: {e}"))
            })?;
            let check = check(
                &KeyValue,
                &operations,
                CheckOptions {
                    time_limit: Duration::from_secs(options.check_time_limit_s),
                    ..CheckOptions::default()
                },
            );
            (Some(check), None)
        }
        Workload::Set => {
            let present = workloads::read_prefix(&reader, "set/", Consistency::Linearizable)
                .await
                .map_err(ClusterError::Misuse)?;
            let tally = set_tally.lock().expect("tally");
            (None, Some(workloads::judge_set(&tally, &present)))
        }
        Workload::Watch => unreachable!("a watch run is judged by finish_watch"),
        Workload::Lock => unreachable!("a lock run is judged by lock::judge_lock"),
        Workload::Bank => {
            let balances = workloads::read_prefix(&reader, "bank/", Consistency::Linearizable)
                .await
                .map_err(ClusterError::Misuse)?;
            let mut tally = bank_tally.lock().expect("tally");
            tally.reads += 1;
            if let Some(problem) = workloads::judge_bank_read(&balances, accounts) {
                tally.bad_reads.push(format!("final read: {problem}"));
            }
            let report = InvariantReport {
                attempted: tally.transfers_attempted,
                acknowledged: tally.transfers_ok,
                unknown: tally.transfers_unknown,
                bad_reads: tally.bad_reads.clone(),
                reads: tally.reads,
                ..InvariantReport::default()
            };
            (None, Some(report))
        }
    })
}
