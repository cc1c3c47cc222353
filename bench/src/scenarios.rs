//! The measurements. Each scenario starts its own emulator, measures the baseline and the
//! daemon on it with the same bytes, stops it (deleting what it stored) and returns rows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use upsync::config::KifsEncoding;
use upsync::upload::kifs::wire::{Record, UploadFilesRequest};

use crate::harness::*;
use crate::{Row, Sizes, Verdict};

/// KiFS part size and whole-file limit (every official client's 60 MiB).
const PART: u64 = 62_914_560;

/// What one daemon run measured.
pub(crate) struct Outcome {
    pub took: Duration,
    pub peak_rss: u64,
    pub flushes: Option<u64>,
    /// Entries the daemon's transactions set or removed.
    pub writes: Option<u64>,
    pub requests: Requests,
    /// The daemon's CPU time from the moment it was running until the files were in.
    pub cpu: Duration,
    /// The daemon's minor page faults over the same time.
    pub minor_faults: u64,
}

/// When a run is over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// The daemon's ledger holds every file (its status, polled).
    Ledger,
    /// The KiFS emulator stored every file (polled cheaply; for many files, where polling
    /// the daemon's status would cost it noticeable CPU). The ledger is checked after.
    KifsStored,
    /// The Redivis emulator created every upload (polled cheaply), then the daemon's status
    /// polled until the ledger holds them: for a figure of the daemon's CPU, which answering
    /// a status every 5 ms for the whole upload would add to (about half a millisecond of
    /// CPU each).
    RedivisPosted,
}

/// One daemon run over one watched folder: start it on an empty folder, move `items` in
/// (renames: they appear whole, with old mtimes), wait until `expected` files are uploaded,
/// stop it, and move the items back where they were.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn daemon_run(
    ctx: &Ctx,
    emulator: &Emulator,
    name: &str,
    remote: Remote,
    items: &[PathBuf],
    expected: u64,
    until: Until,
    tweak: impl FnOnce(&mut DaemonConfig),
) -> BenchResult<Outcome> {
    let dir = ctx.fresh_dir(name)?;
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).map_err(|e| format!("create {}: {e}", inbox.display()))?;
    let mut config = DaemonConfig::new(&dir, emulator);
    if remote.is_redivis() {
        config.redivis_url = Some(emulator.redivis_url());
        config.kifs_url = None;
    }
    config.folders.push((inbox.clone(), remote));
    tweak(&mut config);
    let daemon = Daemon::start(ctx, &dir, &config).await?;
    let sample_before = daemon.sample()?;
    let before = emulator.requests().await?;
    let counted_before = match until {
        Until::KifsStored => emulator.kifs_files_stored().await?,
        Until::RedivisPosted => emulator.redivis_uploads_created().await?,
        Until::Ledger => 0,
    };
    let moved: Vec<(PathBuf, PathBuf)> = items
        .iter()
        .map(|item| {
            let name = item.file_name().expect("bench items have file names");
            (item.clone(), inbox.join(name))
        })
        .collect();
    let started = Instant::now();
    let mut result = Ok(started);
    for (from, to) in &moved {
        if let Err(e) = std::fs::rename(from, to) {
            result = Err(format!("move {} in: {e}", from.display()));
            break;
        }
    }
    if result.is_ok() {
        let total = counted_before + expected;
        result = match until {
            Until::KifsStored => wait_stored(emulator, total).await,
            Until::RedivisPosted => wait_posted(emulator, total).await,
            Until::Ledger => result,
        };
    }
    if let Ok(done_at) = result {
        let poll = if expected > 100 {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(5)
        };
        result = daemon
            .wait_done(expected, poll, Duration::from_secs(1800))
            .await
            .map(|ledger_at| {
                if until == Until::KifsStored {
                    done_at
                } else {
                    ledger_at
                }
            });
    }
    let peak_rss = daemon.peak_rss();
    let sample_after = daemon.sample();
    let requests = emulator.requests().await.map(|after| after - before);
    let log = daemon.terminate().await;
    for (from, to) in &moved {
        if to.exists() {
            let _ = std::fs::rename(to, from);
        }
    }
    let done = result?;
    let log = log?;
    let after = sample_after?;
    Ok(Outcome {
        took: done - started,
        peak_rss: peak_rss?,
        flushes: closing_figure(&log, "flushes"),
        writes: closing_figure(&log, "writes"),
        requests: requests?,
        cpu: after.cpu - sample_before.cpu,
        minor_faults: after.minor_faults - sample_before.minor_faults,
    })
}

/// Polls the Redivis emulator until it has created `total` uploads (every byte of them
/// arrived); returns when it saw that.
async fn wait_posted(emulator: &Emulator, total: u64) -> BenchResult<Instant> {
    wait_count(total, "created uploads", || {
        emulator.redivis_uploads_created()
    })
    .await
}

/// Polls the KiFS emulator until it has stored `total` files; returns when it saw that.
pub(crate) async fn wait_stored(emulator: &Emulator, total: u64) -> BenchResult<Instant> {
    wait_count(total, "stored files", || emulator.kifs_files_stored()).await
}

/// Reads one of the emulator's counters every 5 ms (work for the emulator, never for the
/// daemon) until it reaches `total`, for at most 30 minutes.
async fn wait_count<F, Count>(total: u64, what: &str, count: F) -> BenchResult<Instant>
where
    F: Fn() -> Count,
    Count: std::future::Future<Output = BenchResult<u64>>,
{
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let seen = count().await?;
        if seen >= total {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the emulator counted {seen} of {total} {what} in 30 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The request bodies of a whole multipart upload (init, parts, complete), encoded once into
/// files so that curl sends exactly what a client would, without encoding work.
fn encode_multipart(
    source: &Path,
    size: u64,
    target: &str,
    enc: KifsEncoding,
    dir: &Path,
) -> BenchResult<Vec<PathBuf>> {
    use std::io::{Read, Seek, SeekFrom};
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let uuid = uuid::Uuid::new_v4().to_string();
    let mut options = std::collections::BTreeMap::new();
    if enc == KifsEncoding::Json {
        options.insert("file_encoding".to_string(), "base64".to_string());
    }
    options.insert("multipart_upload_uuid".to_string(), uuid);
    let step = |operation: &str, part: Option<u64>, data: Option<Bytes>| {
        let mut options = options.clone();
        options.insert("multipart_operation".into(), operation.into());
        if let Some(part) = part {
            options.insert("multipart_upload_part_number".into(), part.to_string());
        }
        UploadFilesRequest {
            file_names: vec![target.to_string()],
            file_data: data.into_iter().collect(),
            options,
        }
    };
    let mut file =
        std::fs::File::open(source).map_err(|e| format!("open {}: {e}", source.display()))?;
    let write = |index: usize, request: &UploadFilesRequest| {
        write_request(request, enc, dir.join(format!("request-{index:03}")))
    };
    let mut bodies = vec![write(0, &step("init", None, None))?];
    let parts = size.div_ceil(PART);
    for part in 1..=parts {
        let offset = (part - 1) * PART;
        let len = PART.min(size - offset) as usize;
        let mut data = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut data))
            .map_err(|e| format!("read {}: {e}", source.display()))?;
        bodies.push(write(
            part as usize,
            &step("upload_part", Some(part), Some(Bytes::from(data))),
        )?);
    }
    bodies.push(write(parts as usize + 1, &step("complete", None, None))?);
    Ok(bodies)
}

/// Writes `request`, encoded in `enc`, to `path`: a body for curl to send.
fn write_request(
    request: &UploadFilesRequest,
    enc: KifsEncoding,
    path: PathBuf,
) -> BenchResult<PathBuf> {
    use std::io::Write;
    let mut out =
        std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    for segment in request.encode(enc) {
        out.write_all(&segment)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(path)
}

/// curl POSTs the pre-encoded requests one after the other on one connection.
async fn curl_kifs(
    emulator: &Emulator,
    bodies: &[PathBuf],
    enc: KifsEncoding,
) -> BenchResult<Duration> {
    curl(&curl_kifs_args(emulator, bodies, enc), &[200]).await
}

/// The arguments for one curl process that POSTs `bodies` to `/upload/files` one after
/// the other on one connection.
fn curl_kifs_args(emulator: &Emulator, bodies: &[PathBuf], enc: KifsEncoding) -> Vec<String> {
    let content_type = format!(
        "Content-Type: {}",
        upsync::upload::kifs::wire::content_type(enc)
    );
    let url = format!("{}/upload/files", emulator.kifs_url());
    let mut args = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        if i > 0 {
            args.push("--next".to_string());
        }
        args.extend(curl_upload(
            "POST",
            &url,
            body,
            std::slice::from_ref(&content_type),
        ));
    }
    args
}

fn ratio_row(figure: String, upsync: f64, baseline: f64, unit: &str, target: f64) -> Row {
    let ratio = upsync / baseline;
    Row {
        figure,
        upsync: format!("{upsync:.0} {unit}"),
        baseline: format!("{baseline:.0} {unit}"),
        ratio: format!("{ratio:.2}"),
        target: format!("≥ {target:.2}"),
        verdict: Verdict::of(ratio >= target),
    }
}

/// Large file through KiFS multipart, binary and JSON, vs curl sending the same requests.
pub async fn kifs_large(ctx: &Ctx, sizes: &Sizes, source: &Path) -> BenchResult<Vec<Row>> {
    let size = sizes.large;
    let dir = ctx.fresh_dir("kifs-large")?;
    let emulator = Emulator::start(&dir.join("remote"), &["bench"]).await?;
    let mut rows = Vec::new();
    let result = async {
        let mut measured = Vec::new();
        for enc in [KifsEncoding::Binary, KifsEncoding::Json] {
            let label = match enc {
                KifsEncoding::Binary => "binary",
                KifsEncoding::Json => "json",
            };
            eprintln!("  KiFS {label}: encoding the curl requests");
            let target = format!("bench/curl-{label}.bin");
            let bodies = encode_multipart(
                source,
                size,
                &target,
                enc,
                &dir.join(format!("requests-{label}")),
            )?;
            eprintln!("  KiFS {label}: curl");
            let baseline = curl_kifs(&emulator, &bodies, enc).await?;
            if std::fs::metadata(emulator.kifs_file(&target))
                .map(|m| m.len())
                .ok()
                != Some(size)
            {
                return Err(format!("the curl upload of {target} did not arrive whole"));
            }
            for body in &bodies {
                let _ = std::fs::remove_file(body);
            }
            eprintln!("  KiFS {label}: upsync");
            let outcome = daemon_run(
                ctx,
                &emulator,
                &format!("kifs-large-{label}"),
                Remote::Kifs {
                    directory: "ingest".into(),
                },
                &[source.to_path_buf()],
                1,
                Until::Ledger,
                |c| c.kifs_json = enc == KifsEncoding::Json,
            )
            .await?;
            let stored = emulator.kifs_file(&format!(
                "ingest/{}",
                source.file_name().expect("named").to_string_lossy()
            ));
            let _ = std::fs::remove_file(&stored);
            let _ = std::fs::remove_file(emulator.kifs_file(&target));
            measured.push((label, rate(size, outcome.took), rate(size, baseline)));
        }
        Ok::<_, String>(measured)
    }
    .await;
    emulator.stop().await;
    let measured = result?;
    let (_, bin_up, bin_base) = measured[0];
    let (_, json_up, json_base) = measured[1];
    let gib = size_label(size);
    rows.push(ratio_row(
        format!(
            "Large file ({gib}), KiFS multipart, Avro binary vs curl POST of the same requests"
        ),
        bin_up,
        bin_base,
        "MiB/s",
        0.85,
    ));
    rows.push(Row {
        figure: format!(
            "Large file ({gib}), KiFS multipart, JSON/base64 vs curl POST of the same requests"
        ),
        upsync: format!("{json_up:.0} MiB/s"),
        baseline: format!("{json_base:.0} MiB/s"),
        ratio: format!(
            "{:.2} ({:.2} of binary curl)",
            json_up / json_base,
            json_up / bin_base
        ),
        target: "(reported)".into(),
        verdict: Verdict::Info,
    });
    Ok(rows)
}

/// Large file through the Redivis resumable path vs curl PUT of the file to a session URL.
/// Rounds of the large Redivis figure. Whichever upload runs second on an emulator comes out
/// slower (on the development VM the second gigabyte of page cache written is memory the
/// guest has not touched for a while, and costs about four times as much to fill), so each
/// round has its own emulator, the rounds alternate which side goes first, and each side's
/// best round counts.
const REDIVIS_LARGE_ROUNDS: usize = 4;

pub async fn redivis_large(ctx: &Ctx, sizes: &Sizes, source: &Path) -> BenchResult<Vec<Row>> {
    let size = sizes.large;
    let (mut best_daemon, mut best_curl) = (0f64, 0f64);
    let (mut least_cpu, mut least_curl_cpu) = (Duration::MAX, Duration::MAX);
    for round in 0..REDIVIS_LARGE_ROUNDS {
        let dir = ctx.fresh_dir(&format!("redivis-large-{round}"))?;
        let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
        let curl_first = round % 2 == 0;
        let result = async {
            let mut rates = (0f64, 0f64);
            for side in 0..2 {
                if (side == 0) == curl_first {
                    eprintln!("  Redivis: curl (round {})", round + 1);
                    let session = new_session(ctx, &emulator, size).await?;
                    let range = format!("Content-Range: bytes 0-{}/{size}", size - 1);
                    // curl is the only child running (the daemon of the round has ended).
                    let cpu_before = ended_children_cpu()?;
                    let took =
                        curl(&curl_upload("PUT", &session, source, &[range]), &[200, 201]).await?;
                    least_curl_cpu = least_curl_cpu.min(ended_children_cpu()? - cpu_before);
                    rates.1 = rate(size, took);
                } else {
                    eprintln!("  Redivis: upsync (round {})", round + 1);
                    let outcome = daemon_run(
                        ctx,
                        &emulator,
                        &format!("redivis-large-run-{round}"),
                        Remote::Redivis,
                        &[source.to_path_buf()],
                        1,
                        Until::RedivisPosted,
                        |_| {},
                    )
                    .await?;
                    rates.0 = rate(size, outcome.took);
                    eprintln!("  daemon CPU {:.2} s", outcome.cpu.as_secs_f64());
                    least_cpu = least_cpu.min(outcome.cpu);
                }
            }
            Ok::<_, String>(rates)
        }
        .await;
        emulator.stop().await;
        // The stored gigabytes go, so the next round writes into memory just freed.
        let _ = std::fs::remove_dir_all(&dir);
        let (up, base) = result?;
        eprintln!(
            "  round {}: upsync {up:.0} MiB/s, curl {base:.0} MiB/s ({} first)",
            round + 1,
            if curl_first { "curl" } else { "upsync" }
        );
        best_daemon = best_daemon.max(up);
        best_curl = best_curl.max(base);
    }
    eprintln!("  MD5 of one GiB on one core");
    let gib = size as f64 / (1u64 << 30) as f64;
    let cpu_per_gib = least_cpu.as_secs_f64() / gib;
    let curl_cpu_per_gib = least_curl_cpu.as_secs_f64() / gib;
    let md5_per_gib = md5_floor_per_gib()?.as_secs_f64();
    let md5_and_curl = md5_per_gib + curl_cpu_per_gib;
    Ok(vec![
        ratio_row(
            format!(
                "Large file ({}), Redivis resumable, 8 MiB chunks vs curl PUT to a session URL (best of {REDIVIS_LARGE_ROUNDS} rounds each)",
                size_label(size)
            ),
            best_daemon,
            best_curl,
            "MiB/s",
            0.90,
        ),
        Row {
            figure: format!(
                "Large file ({}), Redivis: daemon CPU per GiB (least of {REDIVIS_LARGE_ROUNDS} rounds) vs one core computing the MD5 of a GiB",
                size_label(size)
            ),
            upsync: format!("{cpu_per_gib:.2} s"),
            baseline: format!("{md5_per_gib:.2} s"),
            ratio: format!("{:.2}", cpu_per_gib / md5_per_gib),
            target: "≤ 1.25".into(),
            verdict: Verdict::of(cpu_per_gib / md5_per_gib <= 1.25),
        },
        Row {
            figure: format!(
                "Large file ({}), Redivis: daemon CPU per GiB vs the MD5 of a GiB plus curl's CPU for its PUT of the same bytes (least of {REDIVIS_LARGE_ROUNDS} rounds: its reads of the file and writes to the socket, which the daemon's upload does too)",
                size_label(size)
            ),
            upsync: format!("{cpu_per_gib:.2} s"),
            baseline: format!(
                "{md5_and_curl:.2} s (MD5 {md5_per_gib:.2} s, curl {curl_cpu_per_gib:.2} s)"
            ),
            ratio: format!("{:.2}", cpu_per_gib / md5_and_curl),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
    ])
}

/// The CPU time one thread takes to compute the MD5 of a GiB held in memory (the digest
/// the daemon must compute for every Redivis upload), with the daemon's MD5 crate; the
/// least of three runs.
fn md5_floor_per_gib() -> BenchResult<Duration> {
    use md5::{Digest, Md5};
    let mut block = vec![0u8; 64 << 20];
    let mut state = 0x1234_5678_9abc_def1u64;
    for chunk in block.chunks_exact_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = thread_cpu()?;
        let mut hasher = Md5::new();
        for _ in 0..(1u64 << 30) / block.len() as u64 {
            hasher.update(&block);
        }
        std::hint::black_box(hasher.finalize());
        best = best.min(thread_cpu()? - started);
    }
    Ok(best)
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> BenchResult<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives across the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(format!(
            "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// A legacy resumable session for `size` bytes: its session URL.
async fn new_session(ctx: &Ctx, emulator: &Emulator, size: u64) -> BenchResult<String> {
    let table = percent_encoding::utf8_percent_encode(TABLE, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2E", ".");
    let url = format!(
        "{}/tables/{table}/resumableUpload?size={size}",
        emulator.redivis_url()
    );
    let answer: serde_json::Value = ctx
        .http
        .post(&url)
        .bearer_auth(REDIVIS_TOKEN)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("POST {url}: not JSON: {e}"))?;
    answer["url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("resumableUpload answered without a url: {answer}"))
}

/// Peak RSS: 4 large files at once, and one 4× file vs one 1× file.
pub async fn memory(
    ctx: &Ctx,
    sizes: &Sizes,
    four: &[PathBuf],
    huge: &Path,
    remote: Remote,
    label: &str,
) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir(&format!("memory-{label}"))?;
    let mut peaks = Vec::new();
    let huge = [huge.to_path_buf()];
    let runs: [(&str, &[PathBuf], u64); 3] = [
        ("four", four, 4),
        ("one", &four[..1], 1),
        ("huge", &huge[..], 1),
    ];
    for (name, items, expected) in runs {
        eprintln!("  memory {label}: {name}");
        // A fresh, empty remote for every run: the "one" file is one of the "four", and a
        // remote that still held it would have the daemon adopt it (hash it, send nothing)
        // instead of uploading it, which is not the run being compared.
        let emulator = Emulator::start(&dir.join(format!("remote-{name}")), &[]).await?;
        let outcome = daemon_run(
            ctx,
            &emulator,
            &format!("memory-{label}-{name}"),
            remote.clone(),
            items,
            expected,
            Until::Ledger,
            |_| {},
        )
        .await;
        emulator.stop().await;
        peaks.push(outcome?.peak_rss);
    }
    let (four_peak, one_peak, huge_peak) = (peaks[0], peaks[1], peaks[2]);
    let limit = 96.0;
    let growth = huge_peak as f64 / one_peak as f64;
    Ok(vec![
        Row {
            figure: format!(
                "Peak RSS, {} files of {} at once, {label}{}",
                4,
                size_label(sizes.memory_file),
                if matches!(remote, Remote::Redivis) {
                    ", 8 MiB chunks"
                } else {
                    ", 60 MiB parts"
                }
            ),
            upsync: format!("{:.1} MiB", mib(four_peak)),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("≤ {limit:.0} MiB"),
            verdict: Verdict::of(mib(four_peak) <= limit),
        },
        Row {
            figure: format!(
                "Peak RSS, one {} file vs one {} file, {label}",
                size_label(sizes.memory_file * 4),
                size_label(sizes.memory_file)
            ),
            upsync: format!("{:.1} MiB", mib(huge_peak)),
            baseline: format!("{:.1} MiB", mib(one_peak)),
            ratio: format!("{growth:.2}"),
            target: "≤ 1.10".into(),
            verdict: Verdict::of(growth <= 1.10),
        },
    ])
}

/// The target for the state database's entries written per small file uploaded.
const MAX_WRITES_PER_FILE: f64 = 3.0;

/// One round of the small-file figures: the one file, the many, and the emulator's CPU time
/// while it stored the many; then both sent by curl.
struct SmallRound {
    one: Outcome,
    many: Outcome,
    emulator_cpu: Duration,
    /// curl sending the one file, then the many, as the daemon's requests (pre-encoded).
    curl_one: Duration,
    curl_many: Duration,
}

/// One round of the small-file figures on a fresh emulator (its own process, so that its
/// cost, one stored file and one inode per file, is measured apart from the daemon's),
/// storing into `remote`.
async fn kifs_small_round(
    ctx: &Ctx,
    remote: &Path,
    files: &SmallFiles<'_>,
    round: usize,
) -> BenchResult<SmallRound> {
    let count = files.count;
    let emulator = Emulator::start_process(ctx, remote, &[]).await?;
    let emulator_pid = emulator.pid().ok_or("the emulator runs as a process")?;
    let result = async {
        let kifs = || Remote::Kifs {
            directory: "ingest".into(),
        };
        eprintln!("  one file (round {})", round + 1);
        let one = daemon_run(
            ctx,
            &emulator,
            "kifs-small-one",
            kifs(),
            &[files.single.to_path_buf()],
            1,
            Until::KifsStored,
            |_| {},
        )
        .await?;
        eprintln!("  {count} small files (round {})", round + 1);
        let emulator_before = process_cpu(emulator_pid)?;
        let many = daemon_run(
            ctx,
            &emulator,
            "kifs-small-many",
            kifs(),
            &[files.small.to_path_buf()],
            count,
            Until::KifsStored,
            |_| {},
        )
        .await?;
        let emulator_cpu = process_cpu(emulator_pid)? - emulator_before;
        let (curl_one, curl_many) = curl_small(&emulator, files).await?;
        eprintln!(
            "  round {}: one file {:.2} s, {count} files {:.2} s; CPU per file: daemon {:.0} µs, emulator {:.0} µs; curl: one file {:.2} s, {count} files {:.2} s",
            round + 1,
            one.took.as_secs_f64(),
            many.took.as_secs_f64(),
            micros_per_file(many.cpu, count),
            micros_per_file(emulator_cpu, count),
            curl_one.as_secs_f64(),
            curl_many.as_secs_f64(),
        );
        Ok::<_, String>(SmallRound {
            one,
            many,
            emulator_cpu,
            curl_one,
            curl_many,
        })
    }
    .await;
    // What it stored is the caller's to delete (`small_rounds`).
    emulator.stop_keeping_data().await;
    result
}

/// Many small files to KiFS vs one file of the same total size, in `sizes.small_rounds`
/// rounds, each on an emulator of its own: the one file, then the many. Each side's best
/// round counts, as for the large Redivis file: the one file's time alone moved between
/// 0.11 and 0.26 s from run to run. After the daemon, curl sends the same bytes as the
/// daemon's requests to the same emulator ([`curl_small`]): the ratio the emulator alone
/// allows, beside which the daemon's own share of the time shows.
///
/// The rounds run twice where the system has a tmpfs at `/dev/shm`: with the emulator
/// storing next to the daemon's state (the target's figure), then storing in memory. On a
/// disk where creating a file costs the emulator up to a millisecond (ext4 looking for free
/// inodes), the first ratio says more about that disk than about the upload path; the
/// second shows the daemon's share.
pub async fn kifs_small(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("kifs-small")?;
    let count = sizes.small_files;
    let size = 4096;
    eprintln!("  writing {count} files of 4 KiB");
    let staging = dir.join("staging");
    let small = staging.join("small");
    let single = staging.join("single.bin");
    write_random_file(&single, count * size, 8)?;
    let small_paths = write_small_files(&small, count, size, 1000, 7)?;
    eprintln!("  encoding curl's requests");
    let curl = encode_small_requests(&small, &small_paths, &single, &dir.join("curl"))?;
    let files = SmallFiles {
        single: &single,
        small: &small,
        count,
        curl,
    };
    let measured = async {
        let on_disk = small_rounds(ctx, &files, sizes.small_rounds, &dir, true).await?;
        let in_memory = match memory_dir() {
            Some(memory) => {
                eprintln!(
                    "  again, the emulator storing in memory ({})",
                    memory.path().display()
                );
                Some(small_rounds(ctx, &files, sizes.small_rounds, memory.path(), false).await?)
            }
            None => None,
        };
        Ok::<_, String>((on_disk, in_memory))
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_dir_all(dir.join("curl"));
    let (on_disk, in_memory) = measured?;
    let rounds_label = format!("best of {} rounds each", sizes.small_rounds);
    let cpu_per_file = |cpu: Duration| format!("{:.0} µs", micros_per_file(cpu, count));
    let per_file = |n: u64| n as f64 / count as f64;
    let faults_per_file = |faults: u64| format!("{:.1} page faults", per_file(faults));
    let many = &on_disk.best_many;
    let slowdown = on_disk.slowdown();
    let mut rows = vec![
        Row {
            figure: format!(
                "{count} files of 4 KiB to KiFS vs one file of {}: time ({rounds_label})",
                size_label(count * size)
            ),
            upsync: format!(
                "{:.2} s ({:.0} files/s)",
                many.took.as_secs_f64(),
                count as f64 / many.took.as_secs_f64()
            ),
            baseline: format!("{:.2} s", on_disk.one_took.as_secs_f64()),
            ratio: format!("{slowdown:.2}"),
            target: "≤ 3.00".into(),
            verdict: Verdict::of(slowdown <= 3.0),
        },
        Row {
            figure: format!(
                "the same ratio for curl sending the daemon's requests to the same emulator (encoded beforehand, up to {} files to a request, {WORKERS} connections; {rounds_label}): what the emulator alone allows; the ratio column is upsync's over curl's",
                upsync::upload::kifs::BATCH_LIMITS.max_files
            ),
            upsync: format!("{slowdown:.2}"),
            baseline: on_disk.curl_figure(),
            ratio: format!("{:.2}", slowdown / on_disk.curl_slowdown()),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
        Row {
            figure: format!("{count} files of 4 KiB to KiFS: HTTP requests per file"),
            upsync: format!("{:.3}", per_file(many.requests.kifs)),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
        Row {
            figure: format!(
                "{count} files of 4 KiB to KiFS: state database flushes and writes (entries set or removed) per file"
            ),
            upsync: format!(
                "{} flushes, {} writes",
                many.flushes
                    .map_or("?".into(), |f| format!("{:.3}", per_file(f))),
                many.writes
                    .map_or("?".into(), |w| format!("{:.2}", per_file(w)))
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("≤ {MAX_WRITES_PER_FILE:.2} writes"),
            verdict: many.writes.map_or(Verdict::Error, |w| {
                Verdict::of(per_file(w) <= MAX_WRITES_PER_FILE)
            }),
        },
        Row {
            figure: format!(
                "{count} files of 4 KiB to KiFS: CPU per file, daemon vs emulator (its own process; least of {} rounds each), and the daemon's minor page faults per file (fewest of the rounds)",
                sizes.small_rounds
            ),
            upsync: format!(
                "{}, {}",
                cpu_per_file(on_disk.daemon_cpu),
                faults_per_file(on_disk.daemon_faults)
            ),
            baseline: cpu_per_file(on_disk.emulator_cpu),
            ratio: format!(
                "{:.2}",
                on_disk.daemon_cpu.as_secs_f64() / on_disk.emulator_cpu.as_secs_f64()
            ),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
    ];
    if let Some(in_memory) = in_memory {
        rows.push(Row {
            figure: format!(
                "the same, the emulator storing in memory (tmpfs): time ({rounds_label}); CPU per file, daemon (with its page faults) and emulator (least of {} rounds each); curl's ratio, sending the daemon's requests",
                sizes.small_rounds
            ),
            upsync: format!(
                "{:.2} s; daemon {} ({}), emulator {}; curl {}",
                in_memory.best_many.took.as_secs_f64(),
                cpu_per_file(in_memory.daemon_cpu),
                faults_per_file(in_memory.daemon_faults),
                cpu_per_file(in_memory.emulator_cpu),
                in_memory.curl_figure()
            ),
            baseline: format!("{:.2} s", in_memory.one_took.as_secs_f64()),
            ratio: format!("{:.2}", in_memory.slowdown()),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        });
    }
    Ok(rows)
}

/// The files of the small-file figures: one file, and a directory of many small ones
/// holding the same bytes; and both as curl sends them.
struct SmallFiles<'a> {
    single: &'a Path,
    small: &'a Path,
    count: u64,
    curl: CurlRequests,
}

/// The bytes of the small-file figures as the daemon's requests, encoded once before the
/// rounds, for curl to send: what the emulator alone allows, with a client that spends
/// nothing on its side.
struct CurlRequests {
    /// One whole-file request holding the one file.
    one: PathBuf,
    /// The many files, as many to a request as the daemon puts in a batch.
    many: Vec<PathBuf>,
}

/// Encodes [`CurlRequests`] into `dir`, in Avro binary as the daemon sends them; their
/// files are named under `ingest/curl/`, apart from the daemon's own.
fn encode_small_requests(
    small: &Path,
    small_paths: &[PathBuf],
    single: &Path,
    dir: &Path,
) -> BenchResult<CurlRequests> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let read = |path: &Path| {
        std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("read {}: {e}", path.display()))
    };
    let write = |name: &str, files: Vec<(String, Bytes)>| -> BenchResult<PathBuf> {
        let (file_names, file_data) = files.into_iter().unzip();
        let request = UploadFilesRequest {
            file_names,
            file_data,
            options: Default::default(),
        };
        write_request(&request, KifsEncoding::Binary, dir.join(name))
    };
    let one = write(
        "one",
        vec![("ingest/curl/single.bin".into(), read(single)?)],
    )?;
    let per_request = upsync::upload::kifs::BATCH_LIMITS.max_files;
    let mut many = Vec::new();
    for (index, batch) in small_paths.chunks(per_request).enumerate() {
        let mut files = Vec::with_capacity(batch.len());
        for path in batch {
            let rel = path
                .strip_prefix(small)
                .map_err(|_| format!("{} is not under {}", path.display(), small.display()))?;
            files.push((format!("ingest/curl/{}", rel.display()), read(path)?));
        }
        many.push(write(&format!("many-{index:04}"), files)?);
    }
    Ok(CurlRequests { one, many })
}

/// curl sends the one file, then the many, to `emulator`, which stores both (after the
/// daemon's runs of the round created `ingest`): their times, each from the start of the
/// curl processes to the last answer. The many go over as many connections as the daemon
/// has workers, each sending its share of the requests one after the other.
async fn curl_small(
    emulator: &Emulator,
    files: &SmallFiles<'_>,
) -> BenchResult<(Duration, Duration)> {
    let stored_before = emulator.kifs_files_stored().await?;
    let one = curl_kifs(
        emulator,
        std::slice::from_ref(&files.curl.one),
        KifsEncoding::Binary,
    )
    .await?;
    let connections = WORKERS as usize;
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let share: Vec<PathBuf> = files
            .curl
            .many
            .iter()
            .skip(connection)
            .step_by(connections)
            .cloned()
            .collect();
        if !share.is_empty() {
            let args = curl_kifs_args(emulator, &share, KifsEncoding::Binary);
            senders.spawn(async move { curl(&args, &[200]).await });
        }
    }
    while let Some(sent) = senders.join_next().await {
        sent.map_err(|e| format!("a curl sender failed: {e}"))??;
    }
    let many = started.elapsed();
    let stored = emulator.kifs_files_stored().await? - stored_before;
    if stored != files.count + 1 {
        return Err(format!(
            "curl's requests stored {stored} files, not {}",
            files.count + 1
        ));
    }
    Ok((one, many))
}

/// The best of some rounds of the small-file figures: each side's best time, and the
/// least CPU per side.
struct SmallRounds {
    one_took: Duration,
    best_many: Outcome,
    daemon_cpu: Duration,
    /// The daemon's minor page faults (the fewest of the rounds).
    daemon_faults: u64,
    emulator_cpu: Duration,
    /// curl's best times for the one file and for the many.
    curl_one_took: Duration,
    curl_many_took: Duration,
}

impl SmallRounds {
    /// The many files' time over the one file's.
    fn slowdown(&self) -> f64 {
        self.best_many.took.as_secs_f64() / self.one_took.as_secs_f64()
    }

    /// The same ratio for curl sending the daemon's requests: what the emulator alone
    /// allows any client.
    fn curl_slowdown(&self) -> f64 {
        self.curl_many_took.as_secs_f64() / self.curl_one_took.as_secs_f64()
    }

    /// curl's ratio with the two times behind it.
    fn curl_figure(&self) -> String {
        format!(
            "{:.2} ({:.2} s vs {:.2} s)",
            self.curl_slowdown(),
            self.curl_many_took.as_secs_f64(),
            self.curl_one_took.as_secs_f64()
        )
    }
}

/// Runs `rounds` rounds, each with an emulator storing under a directory of its own in
/// `base`. With `keep`, the stored files of a round stay until `base` goes: ext4 without a
/// journal does not reuse an inode deleted in the last minute (six while its inode-table
/// block is dirty), and every file created walks past each such inode of its block group.
/// When each round's emulator deleted what it stored, the next round's spent 350 to 1,000
/// µs of CPU per stored file instead of 52 to 58.
async fn small_rounds(
    ctx: &Ctx,
    files: &SmallFiles<'_>,
    rounds: usize,
    base: &Path,
    keep: bool,
) -> BenchResult<SmallRounds> {
    let mut measured = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let remote = base.join(format!("remote-{round}"));
        let result = kifs_small_round(ctx, &remote, files, round).await;
        if !keep {
            let _ = std::fs::remove_dir_all(&remote);
        }
        measured.push(result?);
    }
    let one_took = least(&measured, |r| r.one.took)?;
    let daemon_cpu = least(&measured, |r| r.many.cpu)?;
    let daemon_faults = least(&measured, |r| r.many.minor_faults)?;
    let emulator_cpu = least(&measured, |r| r.emulator_cpu)?;
    let curl_one_took = least(&measured, |r| r.curl_one)?;
    let curl_many_took = least(&measured, |r| r.curl_many)?;
    let best_many = measured
        .into_iter()
        .min_by_key(|r| r.many.took)
        .ok_or("no small-file round ran")?
        .many;
    Ok(SmallRounds {
        one_took,
        best_many,
        daemon_cpu,
        daemon_faults,
        emulator_cpu,
        curl_one_took,
        curl_many_took,
    })
}

/// The least of one figure over the small-file rounds.
fn least<T: Ord>(rounds: &[SmallRound], figure: impl Fn(&SmallRound) -> T) -> BenchResult<T> {
    Ok(rounds
        .iter()
        .map(figure)
        .min()
        .ok_or("no small-file round ran")?)
}

/// A fresh directory on the tmpfs at `/dev/shm`, or `None` where `/dev/shm` is not a
/// tmpfs mount (or cannot be written: then it says so).
fn memory_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let is_tmpfs = mounts.lines().any(|mount| {
        let mut fields = mount.split_whitespace().skip(1);
        (fields.next(), fields.next()) == (Some("/dev/shm"), Some("tmpfs"))
    });
    if !is_tmpfs {
        return None;
    }
    match tempfile::Builder::new()
        .prefix("upsync-bench-")
        .tempdir_in(shm)
    {
        Ok(dir) => Some(dir),
        Err(err) => {
            eprintln!(
                "  no in-memory rounds: cannot create a directory in {}: {err}",
                shm.display()
            );
            None
        }
    }
}

/// Many small files to Redivis: API requests per file.
pub async fn redivis_small(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("redivis-small")?;
    let count = sizes.redivis_files;
    let staging = dir.join("staging");
    let small = staging.join("small");
    write_small_files(&small, count, 4096, 1000, 9)?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let result = daemon_run(
        ctx,
        &emulator,
        "redivis-small-run",
        Remote::Redivis,
        std::slice::from_ref(&small),
        count,
        Until::Ledger,
        |_| {},
    )
    .await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&staging);
    let many = result?;
    let per_file = many.requests.redivis_api as f64 / count as f64;
    Ok(vec![Row {
        figure: format!("{count} files of 4 KiB to Redivis: API requests per file"),
        upsync: format!(
            "{per_file:.2} ({:.0} files/s, {:.2} session PUTs per file)",
            count as f64 / many.took.as_secs_f64(),
            many.requests.redivis_session as f64 / count as f64
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 1.50".into(),
        verdict: Verdict::of(per_file <= 1.5),
    }])
}

/// Small files into a Redivis file index table: API requests per file, with `tempUploads`
/// and `rawFiles` sent once per batch.
pub async fn redivis_files(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("redivis-files")?;
    let count = sizes.file_index_files;
    let staging = dir.join("staging");
    let small = staging.join("scans");
    write_small_files(&small, count, 4096, 1000, 13)?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let result = async {
        emulator.create_file_index().await?;
        let outcome = daemon_run(
            ctx,
            &emulator,
            "redivis-files-run",
            Remote::RedivisFiles,
            std::slice::from_ref(&small),
            count,
            Until::Ledger,
            |_| {},
        )
        .await?;
        Ok::<_, String>((outcome, emulator.redivis_calls("rawFiles.post").await?))
    }
    .await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&staging);
    let (many, registrations) = result?;
    let per_file = many.requests.redivis_api as f64 / count as f64;
    Ok(vec![Row {
        figure: format!(
            "{count} files of 4 KiB to a Redivis file index table: API requests per file"
        ),
        upsync: format!(
            "{per_file:.3} ({registrations} rawFiles calls, {:.0} files/s, {:.2} PUTs per file)",
            count as f64 / many.took.as_secs_f64(),
            many.requests.redivis_session as f64 / count as f64
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "≤ 0.10".into(),
        verdict: Verdict::of(per_file <= 0.1),
    }])
}

/// Restart over a tree of already-uploaded files: time until idle vs `find`.
pub async fn restart(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("restart")?;
    let count = sizes.restart_files;
    let tree = dir.join("tree");
    eprintln!("  writing {count} files");
    write_small_files(&tree, count, 256, 1000, 11)?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let result = async {
        let mut config = DaemonConfig::new(&dir, &emulator);
        config.folders.push((
            tree.clone(),
            Remote::Kifs {
                directory: "ingest".into(),
            },
        ));
        eprintln!("  first start: uploading {count} files");
        let first = Daemon::start(ctx, &dir, &config).await?;
        let started = Instant::now();
        first
            .wait_done(count, Duration::from_millis(250), Duration::from_secs(3600))
            .await?;
        // From the spawn: the start-up line can come after most uploads are done.
        let populate = first.startup + started.elapsed();
        first.terminate().await?;
        let find = time_find(&tree).await?;
        let uploads_before = emulator.kifs_uploads().await?;
        eprintln!("  restart");
        let second = Daemon::start(ctx, &dir, &config).await?;
        let to_idle = second.startup;
        // Anything the restart would upload again shows up within a settle time or two.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = second.status().await?;
        let peak_rss = second.peak_rss()?;
        second.terminate().await?;
        let uploads = emulator.kifs_uploads().await? - uploads_before;
        let queued = unfinished(&report);
        eprintln!("  restart over a ledger written without change times");
        strip_change_times(&config.state_dir)?;
        let legacy = Daemon::start(ctx, &dir, &config).await?;
        let legacy_to_idle = legacy.startup;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let legacy_queued = unfinished(&legacy.status().await?);
        let stamping = stamped(&legacy).await?;
        legacy.terminate().await?;
        let legacy_uploads = emulator.kifs_uploads().await? - uploads_before - uploads;
        eprintln!("  restart with deletions propagated");
        config.on_delete = "delete";
        let deleting = restart_deleting(ctx, &dir, &config, &emulator).await?;
        eprintln!("  first mirror with sync --once and with the daemon, to an emulator in memory");
        let one_shot = one_shot_mirror(ctx, &dir, &tree, count).await?;
        let restarts = Restarts {
            to_idle,
            uploads,
            queued,
            peak_rss,
            legacy_to_idle,
            legacy_uploads,
            legacy_queued,
            stamping,
            deleting,
        };
        Ok::<_, String>((restarts, find, populate, one_shot))
    }
    .await;
    emulator.stop().await;
    let _ = std::fs::remove_dir_all(&tree);
    let (restarts, find, populate, one_shot) = result?;
    let Restarts {
        to_idle,
        uploads,
        queued,
        ..
    } = restarts;
    let ratio = to_idle.as_secs_f64() / find.as_secs_f64();
    let legacy_ratio = restarts.legacy_to_idle.as_secs_f64() / to_idle.as_secs_f64();
    Ok(vec![
        Row {
            figure: format!(
                "First restart over {count} uploaded files whose ledger has no change times \
                 (each entry matched, then rewritten with its change time by the walk after \
                 the start-up scan) vs a restart over an upgraded ledger"
            ),
            upsync: format!(
                "{:.3} s, {} uploads, {} jobs; {} entries rewritten in the {:.3} s after it",
                restarts.legacy_to_idle.as_secs_f64(),
                restarts.legacy_uploads,
                restarts.legacy_queued,
                restarts.stamping.entries,
                restarts.stamping.took.as_secs_f64(),
            ),
            baseline: format!("{:.3} s", to_idle.as_secs_f64()),
            ratio: format!("{legacy_ratio:.2}"),
            target: format!("≤ 2.00, 0 uploads, {count} rewritten"),
            verdict: Verdict::of(
                legacy_ratio <= 2.0
                    && restarts.legacy_uploads == 0
                    && restarts.legacy_queued == 0
                    && restarts.stamping.entries == count,
            ),
        },
        Row {
            figure: format!(
                "Restart over {count} uploaded files: time until idle vs find -printf '%s %T@'"
            ),
            upsync: format!(
                "{:.3} s, {uploads} uploads, {queued} jobs; peak RSS {:.1} MiB",
                to_idle.as_secs_f64(),
                mib(restarts.peak_rss)
            ),
            baseline: format!("{:.3} s", find.as_secs_f64()),
            ratio: format!("{ratio:.2}"),
            target: "≤ 3.00, 0 uploads".into(),
            verdict: Verdict::of(ratio <= 3.0 && uploads == 0 && queued == 0),
        },
        restarts.deleting.row(count, find),
        Row {
            figure: format!("First upload of those {count} files of 256 B to KiFS (start-up scan)"),
            upsync: format!(
                "{:.1} s ({:.0} files/s)",
                populate.as_secs_f64(),
                count as f64 / populate.as_secs_f64()
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "(reported)".into(),
            verdict: Verdict::Info,
        },
        one_shot.row(count),
    ])
}

/// The tree mirrored from nothing by `upsync sync --once` and by the daemon.
struct OneShot {
    once: OnceRun,
    daemon_took: Duration,
    in_memory: bool,
}

/// What one `upsync sync --once` did, from its output.
struct OnceRun {
    took: Duration,
    uploaded: bool,
    flushes: Option<u64>,
    writes: Option<u64>,
}

impl OneShot {
    fn row(&self, count: u64) -> Row {
        let once = &self.once;
        let per_file = |figure: Option<u64>| {
            figure.map_or("?".to_string(), |n| {
                format!("{:.3}", n as f64 / count as f64)
            })
        };
        let storing = if self.in_memory {
            "in memory (tmpfs)"
        } else {
            "on disk (no tmpfs here)"
        };
        Row {
            figure: format!(
                "First mirror of those {count} files with `upsync sync --once` vs the daemon's \
                 first upload, each from a fresh state dir, the emulator storing {storing}; \
                 the run's state database flushes and writes per file"
            ),
            upsync: format!(
                "{:.1} s ({:.0} files/s); {} flushes, {} writes",
                once.took.as_secs_f64(),
                count as f64 / once.took.as_secs_f64(),
                per_file(once.flushes),
                per_file(once.writes),
            ),
            baseline: format!("{:.1} s", self.daemon_took.as_secs_f64()),
            ratio: format!(
                "{:.2}",
                once.took.as_secs_f64() / self.daemon_took.as_secs_f64()
            ),
            target: "(reported)".into(),
            verdict: if once.uploaded {
                Verdict::Info
            } else {
                Verdict::Error
            },
        }
    }
}

/// Mirrors `tree` from nothing twice, each run with a state dir and a KiFS directory of its
/// own: the daemon (until its status counts every file), then `upsync sync --once`. The
/// emulator runs as its own process and stores in memory where it can: on disk, creating
/// its inodes sets the pace of both.
async fn one_shot_mirror(ctx: &Ctx, dir: &Path, tree: &Path, count: u64) -> BenchResult<OneShot> {
    let memory = memory_dir();
    let data = match &memory {
        Some(memory) => memory.path().to_path_buf(),
        None => dir.join("mirror-remote"),
    };
    let emulator = Emulator::start_process(ctx, &data, &["daemon", "once"]).await?;
    let config = |name: &str| {
        let mut config = DaemonConfig::new(dir, &emulator);
        config.state_dir = dir.join(format!("{name}-state"));
        config.folders.push((
            tree.to_path_buf(),
            Remote::Kifs {
                directory: name.into(),
            },
        ));
        config
    };
    let result = async {
        let daemon = Daemon::start(ctx, dir, &config("daemon")).await?;
        let started = Instant::now();
        daemon
            .wait_done(count, Duration::from_millis(250), Duration::from_secs(3600))
            .await?;
        let daemon_took = daemon.startup + started.elapsed();
        daemon.terminate().await?;
        let once = sync_once(ctx, dir, &config("once"), count).await?;
        Ok::<_, String>(OneShot {
            once,
            daemon_took,
            in_memory: memory.is_some(),
        })
    }
    .await;
    emulator.stop().await;
    result
}

/// Runs `upsync sync --once` over `config` and reads what it did from its output.
async fn sync_once(
    ctx: &Ctx,
    dir: &Path,
    config: &DaemonConfig,
    count: u64,
) -> BenchResult<OnceRun> {
    let config_path = dir.join("once.toml");
    std::fs::write(&config_path, config.render())
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    let started = Instant::now();
    // `output` pipes stdout and stderr (the log) both.
    let output = tokio::process::Command::new(&ctx.bin)
        .args(["sync", "--once", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", ctx.bin.display()))?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "sync --once failed ({}):\n{}",
            output.status,
            tail(&text, 20)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(OnceRun {
        took,
        uploaded: stdout.contains(&format!("uploaded {count} file(s)")),
        flushes: closing_figure(&text, "flushes"),
        writes: closing_figure(&text, "writes"),
    })
}

/// Three restarts over the same uploaded tree: over the current ledger, over one whose
/// entries were written before change times were kept, and with the folder propagating
/// deletions.
struct Restarts {
    to_idle: Duration,
    uploads: u64,
    queued: u64,
    /// The daemon's peak RSS in the first restart, bytes.
    peak_rss: u64,
    legacy_to_idle: Duration,
    legacy_uploads: u64,
    legacy_queued: u64,
    stamping: Stamping,
    deleting: DeletingRestart,
}

/// A restart over the uploaded tree with `on_delete = "delete"`: at the end of its scan
/// the daemon looks for every uploaded file, to delete the remote copies of those gone.
struct DeletingRestart {
    to_idle: Duration,
    peak_rss: u64,
    uploads: u64,
    deletions: u64,
    queued: u64,
}

/// Starts the daemon with `config` (whose folder propagates deletions) over the tree the
/// emulator holds whole, and counts what it sent and deleted.
async fn restart_deleting(
    ctx: &Ctx,
    dir: &Path,
    config: &DaemonConfig,
    emulator: &Emulator,
) -> BenchResult<DeletingRestart> {
    let uploads_before = emulator.kifs_uploads().await?;
    let deletes_before = emulator.kifs_deletes().await?;
    let daemon = Daemon::start(ctx, dir, config).await?;
    let to_idle = daemon.startup;
    // A deletion waits a settle time (at least a second) before it runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queued = unfinished(&daemon.status().await?);
    let peak_rss = daemon.peak_rss()?;
    daemon.terminate().await?;
    Ok(DeletingRestart {
        to_idle,
        peak_rss,
        uploads: emulator.kifs_uploads().await? - uploads_before,
        deletions: emulator.kifs_deletes().await? - deletes_before,
        queued,
    })
}

impl DeletingRestart {
    fn row(&self, count: u64, find: Duration) -> Row {
        let ratio = self.to_idle.as_secs_f64() / find.as_secs_f64();
        Row {
            figure: format!(
                "Restart over {count} uploaded files in a folder that propagates deletions \
                 (on_delete = \"delete\": the scan's end looks for every uploaded file): \
                 time until idle vs find -printf '%s %T@'"
            ),
            upsync: format!(
                "{:.3} s, {} uploads, {} deletion requests, {} jobs; peak RSS {:.1} MiB",
                self.to_idle.as_secs_f64(),
                self.uploads,
                self.deletions,
                self.queued,
                mib(self.peak_rss)
            ),
            baseline: format!("{:.3} s", find.as_secs_f64()),
            ratio: format!("{ratio:.2}"),
            target: "(reported), 0 uploads, 0 deletions".into(),
            verdict: Verdict::of(self.uploads == 0 && self.deletions == 0 && self.queued == 0),
        }
    }
}

/// Jobs not done in a status report (queued, active, waiting to retry, failed).
fn unfinished(report: &upsync::daemon::status::StatusReport) -> u64 {
    report
        .folders
        .iter()
        .map(|f| f.counts.queued + f.counts.active + f.counts.retry_wait + f.counts.failed)
        .sum()
}

/// The walk that gives a ledger's entries their change times after the start-up scan, as
/// the daemon's log tells it when it ends.
struct Stamping {
    entries: u64,
    took: Duration,
}

/// The line the daemon logs when that walk ends.
const STAMPED_LINE: &str = "ledger entries written by an older version now hold";

/// Waits for `daemon` to end the walk (at most a minute).
async fn stamped(daemon: &Daemon) -> BenchResult<Stamping> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = daemon.log_text();
        if let (Some(entries), Some(took_ms)) = (
            log_figure(&log, STAMPED_LINE, "entries"),
            log_figure(&log, STAMPED_LINE, "took_ms"),
        ) {
            return Ok(Stamping {
                entries,
                took: Duration::from_millis(took_ms),
            });
        }
        if Instant::now() > deadline {
            return Err(
                "the daemon did not give the ledger its change times within a minute".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rewrites every ledger entry of a stopped daemon's state as an older upsync wrote it:
/// without the change time.
fn strip_change_times(state_dir: &Path) -> BenchResult<()> {
    let store = upsync::queue::Store::open(state_dir).map_err(|e| e.to_string())?;
    for (key, entry) in store.ledger_entries(None).map_err(|e| e.to_string())? {
        let legacy = upsync::fingerprint::Fingerprint {
            ctime_ns: None,
            ..entry.fingerprint
        };
        store
            .record_uploaded(&key, &legacy, &entry.remote, entry.md5.as_deref())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The best of three warm runs of `find DIR -printf '%s %T@\n'`.
pub async fn time_find(tree: &Path) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..4 {
        let started = Instant::now();
        let status = tokio::process::Command::new("find")
            .arg(tree)
            .args(["-printf", "%s %T@\\n"])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| format!("cannot run find: {e}"))?;
        if !status.success() {
            return Err(format!("find failed: {status}"));
        }
        best = best.min(started.elapsed());
    }
    Ok(best)
}

/// 1 KiB files written one at a time: closed → on the remote, minus the settle time.
pub async fn latency(ctx: &Ctx, sizes: &Sizes) -> BenchResult<Vec<Row>> {
    let dir = ctx.fresh_dir("latency")?;
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let settle = Duration::from_secs(1);
    let result = async {
        let (mut config, inbox) = DaemonConfig::kifs_inbox(&dir, &emulator)?;
        config.settle = "1s";
        let daemon = Daemon::start(ctx, &dir, &config).await?;
        let mut samples = Vec::new();
        let data = vec![b'x'; 1024];
        let mut failure = None;
        for i in 0..sizes.latency_files {
            // Files written right after the previous arrival would line up with the
            // watcher's ticks; real files come at any time.
            let pause = rand::random_range(0..250);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let name = format!("lat-{i:04}.bin");
            let path = inbox.join(&name);
            if let Err(e) = std::fs::write(&path, &data) {
                failure = Some(format!("write {}: {e}", path.display()));
                break;
            }
            let closed = Instant::now();
            match wait_for_file(
                &emulator.kifs_file(&format!("ingest/{name}")),
                1024,
                Duration::from_millis(1),
                Duration::from_secs(60),
            )
            .await
            {
                Ok(arrived) => {
                    samples.push((arrived - closed).as_secs_f64() - settle.as_secs_f64())
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        daemon.terminate().await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(samples),
        }
    }
    .await;
    emulator.stop().await;
    let mut samples = result?;
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&samples, 0.5);
    let p99 = percentile(&samples, 0.99);
    Ok(vec![Row {
        figure: format!(
            "Latency, 1 KiB file closed → on KiFS, minus the 1 s settle ({} files)",
            samples.len()
        ),
        upsync: format!(
            "median {:.0} ms, p99 {:.0} ms",
            median * 1000.0,
            p99 * 1000.0
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: "(reported)".into(),
        verdict: Verdict::Info,
    }])
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", mib(bytes))
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// `bandwidth_limit = "10MiB/s"` with 4 files of 64 MiB uploading at once to Redivis: the
/// aggregate rate of acknowledged bytes (all uploads, sampled from the daemon's status)
/// between 10 % and 90 % of the total, against the limit.
pub async fn bandwidth(ctx: &Ctx) -> BenchResult<Vec<Row>> {
    const FILES: u64 = 4;
    const SIZE: u64 = 64 << 20;
    const LIMIT: u64 = 10 << 20;
    let dir = ctx.fresh_dir("bandwidth")?;
    let staging = dir.join("staging");
    let mut files = Vec::new();
    for i in 0..FILES {
        let path = staging.join(format!("paced-{i}.bin"));
        write_random_file(&path, SIZE, 300 + i)?;
        files.push(path);
    }
    let emulator = Emulator::start(&dir.join("remote"), &[]).await?;
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).map_err(|e| format!("create {}: {e}", inbox.display()))?;
    let mut config = DaemonConfig::new(&dir, &emulator);
    config.redivis_url = Some(emulator.redivis_url());
    config.kifs_url = None;
    // Small chunks: the status counts acknowledged chunks, so they set its resolution.
    config.chunk_size = "2MiB";
    config.bandwidth_limit = Some("10MiB/s");
    config.folders.push((inbox.clone(), Remote::Redivis));
    let daemon = Daemon::start(ctx, &dir, &config).await?;
    for file in &files {
        let name = file.file_name().expect("bench files have names");
        std::fs::rename(file, inbox.join(name)).map_err(|e| format!("move in: {e}"))?;
    }
    let samples = acknowledged_bytes(&daemon, FILES, SIZE).await;
    let log = daemon.terminate().await;
    emulator.stop().await;
    let samples = samples?;
    log?;
    let total = FILES * SIZE;
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, bytes)| *bytes as f64 >= share * total as f64)
            .copied()
            .ok_or_else(|| "the samples never reached the share".to_string())
    };
    let ((t10, b10), (t90, b90)) = (at(0.1)?, at(0.9)?);
    let rate = (b90 - b10) as f64 / t90.duration_since(t10).as_secs_f64();
    let ratio = rate / LIMIT as f64;
    Ok(vec![Row {
        figure: format!(
            "bandwidth_limit = \"10MiB/s\", {FILES} files of {} at once to Redivis: aggregate rate",
            size_label(SIZE)
        ),
        upsync: format!("{:.2} MiB/s", mib(rate as u64)),
        baseline: "10.00 MiB/s (the limit)".into(),
        ratio: format!("{ratio:.3}"),
        target: "0.90–1.10".into(),
        verdict: Verdict::of((0.9..=1.1).contains(&ratio)),
    }])
}

/// (when, bytes acknowledged over all `files` uploads) every 100 ms until all are done.
async fn acknowledged_bytes(
    daemon: &Daemon,
    files: u64,
    size: u64,
) -> BenchResult<Vec<(Instant, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut samples = Vec::new();
    loop {
        let report = daemon.status().await?;
        let done: u64 = report.folders.iter().map(|f| f.counts.done).sum();
        let in_flight: u64 = report.in_flight.iter().map(|u| u.bytes_done).sum();
        samples.push((Instant::now(), done * size + in_flight));
        if done >= files {
            return Ok(samples);
        }
        if !report.failed.is_empty() || Instant::now() > deadline {
            return Err(format!(
                "{done} of {files} uploaded, {} failed",
                report.failed.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
