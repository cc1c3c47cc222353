//! A system clock set back holds nothing up: the real `upsync` binary under libfaketime
//! (Debian package `faketime`), which moves the wall clock the daemon reads and leaves its
//! monotonic clock alone, against the real emulator process.
//!
//! Cases:
//! - Files queued while the remote is down, then the clock set back an hour while the
//!   daemon runs: once the remote answers, they and a file written after the step arrive
//!   within the remote check's pause, not an hour later.
//! - Files queued by a daemon that stopped, then a start with the clock an hour behind:
//!   they arrive at once.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The library the `faketime` command preloads (`$LIB` is the dynamic loader's own
/// expansion: the architecture's library directory).
const LIBFAKETIME: &str = "/usr/$LIB/faketime/libfaketime.so.1";

/// Whether libfaketime can run here ([`tool_available`]).
fn faketime_available() -> bool {
    tool_available("faketime", "faketime")
}

/// The daemon's wall clock goes by libfaketime: shifted by what `FAKETIME` says, or by what
/// `FAKETIME_TIMESTAMP_FILE` says at each reading. Its monotonic clock and the file times
/// it reads are left alone, as a real clock step leaves them.
fn under_faketime(command: &mut Command) {
    command
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("NO_FAKE_STAT", "1");
}

/// Stops the daemon, then removes what libfaketime keeps in shared memory per process
/// (named by its pid), which a process that does not exit in order leaves in /dev/shm.
fn stop_under_faketime(mut daemon: DaemonProcess) {
    let pid = daemon.pid();
    assert_eq!(daemon.terminate(), Some(0));
    for name in [
        format!("faketime_shm_{pid}"),
        format!("sem.faketime_sem_{pid}"),
    ] {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
    }
}

/// One KiFS folder with a short settle, its emulator stopped: the remote refuses
/// connections until the test starts it again.
fn site_with_the_remote_down() -> Site {
    let mut site = Site::start(&["in"], &["--kifs-directory", "ingest"]);
    one_folder_config(&site, true, "", "")
        .top("shutdown_timeout = \"5s\"")
        .each_folder(|folder| folder.with("settle = \"1s\""))
        .write(&site.config);
    site.emulator.stop();
    site
}

fn write_settled(folder: &Path, name: &str) {
    let path = folder.join(name);
    std::fs::write(&path, format!("the file {name}\n")).unwrap();
    backdate(&path, 600);
}

fn wait_queued(daemon: &DaemonProcess, config: &Path, queued: u64) {
    daemon.wait_until(
        Duration::from_secs(30),
        &format!("{queued} files queued while the remote is down"),
        || folders_total(&status_json(config), "queued") == queued,
    );
}

fn wait_arrived(daemon: &DaemonProcess, site: &Site, names: &[&str]) {
    // The remote check's pause is at most 20 s; a clock step held the files an hour.
    daemon.wait_until(
        Duration::from_secs(45),
        &format!("{names:?} on the remote"),
        || {
            names.iter().all(|name| {
                let local = site.folder().join(name);
                site.emulator.kifs_holds(&local, &format!("ingest/{name}"))
            })
        },
    );
}

#[test]
fn files_queued_before_the_clock_went_back_an_hour_arrive_once_the_remote_answers() {
    if !faketime_available() {
        return;
    }
    let mut site = site_with_the_remote_down();
    let offset = site.tmp.path().join("faketime.rc");
    std::fs::write(&offset, "+0\n").unwrap();
    let daemon = DaemonProcess::start_with(&site.config, |command| {
        under_faketime(command);
        command
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            .env("FAKETIME_NO_CACHE", "1");
    });
    for name in ["a.txt", "b.txt", "c.txt"] {
        write_settled(site.folder(), name);
    }
    wait_queued(&daemon, &site.config, 3);

    std::fs::write(&offset, "-1h\n").unwrap();
    site.emulator.start_again(None);
    write_settled(site.folder(), "after-the-step.txt");

    wait_arrived(
        &daemon,
        &site,
        &["a.txt", "b.txt", "c.txt", "after-the-step.txt"],
    );
    daemon.wait_settled(&site.config, 4);
    stop_under_faketime(daemon);
}

#[test]
fn files_queued_before_a_stop_arrive_at_once_after_a_start_with_the_clock_an_hour_behind() {
    if !faketime_available() {
        return;
    }
    let mut site = site_with_the_remote_down();
    let mut first = DaemonProcess::start(&site.config);
    for name in ["a.txt", "b.txt"] {
        write_settled(site.folder(), name);
    }
    wait_queued(&first, &site.config, 2);
    assert_eq!(first.terminate(), Some(0));

    site.emulator.start_again(None);
    let behind = DaemonProcess::start_with(&site.config, |command| {
        under_faketime(command);
        command.env("FAKETIME", "-1h");
    });
    wait_arrived(&behind, &site, &["a.txt", "b.txt"]);
    behind.wait_settled(&site.config, 2);
    stop_under_faketime(behind);
}
