//! The standard process metrics of Prometheus client libraries, read at each scrape:
//!
//! | metric | type | read from |
//! | --- | --- | --- |
//! | `process_cpu_seconds_total` | counter | `getrusage(RUSAGE_SELF)`: user + system time |
//! | `process_resident_memory_bytes` | gauge | `/proc/self/statm`: resident pages × page size |
//! | `process_virtual_memory_bytes` | gauge | `/proc/self/statm`: total pages × page size |
//! | `process_open_fds` | gauge | the entries of `/proc/self/fd` |
//! | `process_max_fds` | gauge | the soft `RLIMIT_NOFILE` |
//! | `process_start_time_seconds` | gauge | `/proc/self/stat` start time after boot + `btime` of `/proc/stat` |
//! | `process_threads` | gauge | `/proc/self/stat`: number of threads |
//!
//! Read by hand: the process collector of the prometheus-client ecosystem
//! (kubert-prometheus-process) is built for an older prometheus-client, and these are a few
//! lines of `/proc`. A figure that cannot be read is left out of that scrape; the others
//! still show.

use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the process metrics at every scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let sample = ProcessSample::read();
        if let Some(cpu) = sample.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                sample.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                sample.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                sample.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                sample.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

/// One reading of the process figures; `None` where one could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<f64>,
}

impl ProcessSample {
    pub fn read() -> ProcessSample {
        let (virtual_bytes, resident_bytes) = memory().unzip();
        let (start_time_seconds, threads) = stat().unzip();
        ProcessSample {
            cpu_seconds: cpu_seconds(),
            resident_bytes,
            virtual_bytes,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as f64),
            max_fds: max_fds(),
            start_time_seconds: start_time_seconds.flatten(),
            threads,
        }
    }
}

fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let seconds =
        |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000).as_secs_f64();
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// (virtual, resident) bytes.
fn memory() -> Option<(f64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_whitespace().map(|n| n.parse::<f64>().ok());
    let (total, resident) = (pages.next()??, pages.next()??);
    let page_size = sysconf(libc::_SC_PAGESIZE)?;
    Some((total * page_size, resident * page_size))
}

/// (start time in seconds since the epoch, threads); the start time needs the boot time too.
fn stat() -> Option<(Option<f64>, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its
    // closing parenthesis, where field 3 (the state) is index 0.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let threads: f64 = fields.get(17)?.parse().ok()?;
    let started_ticks: Option<f64> = fields.get(19).and_then(|t| t.parse().ok());
    let start = match (started_ticks, boot_time(), sysconf(libc::_SC_CLK_TCK)) {
        (Some(ticks), Some(boot), Some(per_second)) => Some(boot + ticks / per_second),
        _ => None,
    };
    Some((start, threads))
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn max_fds() -> Option<f64> {
    // SAFETY: getrlimit only writes into the struct it is given.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur as f64)
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a system setting and has no other effect.
    let value = unsafe { libc::sysconf(name) };
    (value > 0).then_some(value as f64)
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn every_figure_is_read_and_plausible_for_this_process() {
        let sample = ProcessSample::read();
        let resident = sample.resident_bytes.expect("resident memory is read");
        assert!(resident > 1_000_000.0, "{sample:?}");
        assert!(sample.virtual_bytes.expect("virtual memory is read") >= resident);
        let open = sample.open_fds.expect("open fds are read");
        assert!(open >= 3.0, "stdin, stdout and stderr at least: {sample:?}");
        assert!(sample.max_fds.expect("the fd limit is read") >= open);
        assert!(sample.threads.expect("threads are read") >= 1.0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs_f64();
        let started = sample.start_time_seconds.expect("the start time is read");
        assert!(
            started <= now + 1.0 && started > now - 6.0 * 3600.0,
            "this test process started {} s ago",
            now - started
        );
    }

    #[test]
    fn cpu_time_counts_up_while_working() {
        // Spin until the figure moves (on a loaded machine 50 ms of wall time may be far
        // less CPU time); a figure that never moves fails at the deadline.
        let before = cpu_seconds().expect("getrusage works");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut spins = 0u64;
        let mut after = before;
        while after < before + 0.02 && std::time::Instant::now() < deadline {
            for _ in 0..10_000 {
                spins = std::hint::black_box(spins + 1);
            }
            after = cpu_seconds().expect("getrusage works");
        }
        assert!(
            after >= before + 0.02,
            "{before} → {after} after {spins} spins"
        );
    }
}
