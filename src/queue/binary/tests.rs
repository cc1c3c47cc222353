use super::*;

fn fingerprint(size: u64, mtime_ns: i128, ctime_ns: Option<i128>) -> Fingerprint {
    Fingerprint {
        size,
        mtime_ns,
        inode: 1_234_567,
        ctime_ns,
    }
}

fn queued_job() -> Job {
    Job::queued(
        JobId(0x0001_0203_0000_0042),
        FileKey {
            folder: "/data/exports".into(),
            rel: "2026/12/day.csv".into(),
        },
        fingerprint(
            4096,
            1_765_000_000_123_456_789,
            Some(1_765_000_001_000_000_000),
        ),
        1_765_000_002_000,
    )
}

/// Jobs that between them set every field, every state and every option both ways.
fn every_kind_of_job() -> Vec<Job> {
    let queued = queued_job();
    let import = Import {
        remote: "/api/v1/uploads/u-1".into(),
        target: "demo.uploads:next.files".into(),
        fingerprint: fingerprint(9, -5, None),
        md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
        posted_at_ms: 7,
        transfer_ms: 0,
        failed: None,
    };
    vec![
        queued.clone(),
        Job {
            state: JobState::Active,
            claimed: Some(fingerprint(1, 2, Some(3))),
            in_line: false,
            ..queued.clone()
        },
        Job {
            state: JobState::Finalizing,
            finalize_started: true,
            unconfirmed_attempt_ms: Some(u64::MAX),
            ..queued.clone()
        },
        Job {
            state: JobState::Importing,
            import: Some(import.clone()),
            ..queued.clone()
        },
        Job {
            state: JobState::Importing,
            import: Some(Import {
                failed: Some("the import failed: bad row 3".into()),
                transfer_ms: 812,
                ..import
            }),
            corrupt_imports: 1,
            ..queued.clone()
        },
        Job {
            state: JobState::RetryWait {
                next_attempt_at_ms: 1_765_000_009_999,
            },
            attempts: u32::MAX,
            last_error: Some("KiFS /upload/files: HTTP 503 — «busy»".into()),
            ..queued.clone()
        },
        Job {
            state: JobState::Failed {
                reason: "HTTP 401".into(),
                failed_at_ms: 5,
                kind: Some("auth".into()),
            },
            ..queued.clone()
        },
        Job {
            state: JobState::Failed {
                reason: String::new(),
                failed_at_ms: 0,
                kind: None,
            },
            kind: JobKind::Delete,
            approved: true,
            fingerprint: fingerprint(u64::MAX, i128::MIN, Some(i128::MAX)),
            key: FileKey {
                folder: "/".into(),
                rel: "ünïcode/名前.bin".into(),
            },
            id: JobId(u64::MAX),
            created_at_ms: 0,
            updated_at_ms: u64::MAX,
            ..queued
        },
    ]
}

#[test]
fn every_job_reads_back_as_written() {
    for job in every_kind_of_job() {
        let raw = encode_job(&job);
        assert!(is_binary(&raw));
        assert_eq!(decode_job(&raw), Ok(job));
    }
}

#[test]
fn a_queued_job_takes_less_than_a_third_of_its_json() {
    let job = queued_job();
    let json = serde_json::to_vec(&job).unwrap();
    assert!(!is_binary(&json));
    let binary = encode_job(&job).len();
    assert!(
        binary * 3 < json.len(),
        "binary {binary} bytes, JSON {}",
        json.len()
    );
}

#[test]
fn a_record_cut_short_or_run_long_is_refused() {
    for job in every_kind_of_job() {
        let raw = encode_job(&job);
        for len in 0..raw.len() {
            assert!(
                decode_job(&raw[..len]).is_err(),
                "{len} of {} bytes",
                raw.len()
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            decode_job(&longer),
            Err("1 bytes past the end of the record".into())
        );
    }
}

/// The offset of the byte after the job's fingerprint in `raw`: its state's tag.
fn state_offset(job: &Job) -> usize {
    let mut fields = Writer::with_tag(0);
    fields.unsigned(job.id.0);
    fields.string(&job.key.folder);
    fields.string(&job.key.rel);
    fields.fingerprint(&job.fingerprint);
    fields.0.len()
}

#[test]
fn unknown_tags_flags_and_oversized_numbers_are_refused() {
    let job = queued_job();
    let raw = encode_job(&job);
    let at = state_offset(&job);
    let with = |offset: usize, byte: u8| {
        let mut changed = raw.clone();
        changed[offset] = byte;
        decode_job(&changed)
    };
    assert_eq!(with(at, 6), Err("unknown job state 6".into()));
    assert_eq!(with(at + 1, 2), Err("unknown job kind 2".into()));
    assert_eq!(with(at + 2, 8), Err("unknown job flags 0x08".into()));
    // The option of `last_error` (after attempts and corrupt_imports, one byte each).
    assert_eq!(with(at + 5, 2), Err("an option marked 2".into()));
    assert_eq!(
        with(0, 0),
        Err("not a record of the binary encoding".into())
    );

    // Attempts of 2^32: a number of 33 bits where 32 fit.
    let mut oversized = raw[..at + 3].to_vec();
    oversized.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
    oversized.extend_from_slice(&raw[at + 4..]);
    assert_eq!(
        decode_job(&oversized),
        Err("a number of more than 32 bits".into())
    );
    // An id of eleven bytes.
    let mut endless = vec![TAG];
    endless.extend_from_slice(&[0xff; 10]);
    endless.push(0x01);
    assert_eq!(
        decode_job(&endless),
        Err("a number of more than 64 bits".into())
    );
}

#[test]
fn a_string_that_is_not_utf8_is_refused() {
    let job = Job {
        key: FileKey {
            folder: "/d".into(),
            rel: "x".into(),
        },
        ..queued_job()
    };
    let mut raw = encode_job(&job);
    let folder_at = raw.iter().position(|&b| b == b'/').unwrap();
    raw[folder_at] = 0xff;
    assert_eq!(decode_job(&raw), Err("a string that is not UTF-8".into()));
}

#[test]
fn signed_numbers_keep_their_sign_at_the_extremes() {
    for value in [0, 1, -1, 63, -64, 64, -65, i128::MAX, i128::MIN] {
        assert_eq!(unzigzag(zigzag(value)), value);
    }
}
