//! The human-readable plan `upsync check` prints: where state lives, which services are
//! used, and one line per folder saying where its files go. Never shows a secret.

use std::fmt::Write as _;

use super::units::format_size;
use super::{
    BandwidthConfig, Config, FolderConfig, KifsAuth, KifsEncoding, NetConfig, RedivisProtocol,
    Target,
};

impl Config {
    /// The folder → target plan, one line per folder, plus the service URLs and state_dir.
    pub fn plan(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "config: {}", self.source.display());
        let _ = writeln!(out, "state_dir: {}", self.state_dir.display());
        let rescan = match self.rescan_interval {
            Some(d) => format!("every {}", humantime::format_duration(d)),
            None => "off".to_string(),
        };
        let metrics = match self.metrics_listen {
            Some(addr) => addr.to_string(),
            None => "off".to_string(),
        };
        let _ = writeln!(
            out,
            "concurrency: {}, rescan: {}, shutdown timeout: {}, retry delays up to: {}, \
             metrics: {}",
            self.concurrency,
            rescan,
            humantime::format_duration(self.shutdown_timeout),
            humantime::format_duration(self.retry_max_delay),
            metrics
        );
        if let Some(k) = &self.kifs {
            let auth = match &k.auth {
                KifsAuth::None => "none".to_string(),
                KifsAuth::Basic { username, .. } => format!("basic as \"{username}\""),
                KifsAuth::Bearer { .. } => "bearer token".to_string(),
            };
            let encoding = match k.encoding {
                KifsEncoding::Binary => "binary",
                KifsEncoding::Json => "json",
            };
            let _ = writeln!(out, "kifs: {} (auth: {auth}, encoding: {encoding})", k.url);
            let _ = writeln!(out, "  network: {}", net_line(&k.net));
        }
        if let Some(r) = &self.redivis {
            let protocol = match r.protocol {
                RedivisProtocol::ResumableUpload => "resumable-upload",
                RedivisProtocol::TempUploads => "temp-uploads",
            };
            let _ = writeln!(
                out,
                "redivis: {} (protocol: {protocol}, chunk size: {}, rate-limit window: {})",
                r.api_url,
                format_size(r.chunk_size),
                humantime::format_duration(r.rate_limit_window)
            );
            let _ = writeln!(out, "  network: {}", net_line(&r.net));
        }
        let _ = writeln!(out, "bandwidth: {}", bandwidth_line(&self.bandwidth));
        if let Some(e) = &self.emulator {
            let _ = writeln!(
                out,
                "emulator: listening on {}, data in {}",
                e.listen,
                e.data_dir.display()
            );
        }
        let _ = writeln!(out, "folders:");
        for folder in &self.folders {
            let _ = writeln!(out, "  {}", folder_line(folder));
        }
        out
    }
}

/// "connect timeout 30s, idle timeout 2m, CA file /etc/ca.pem (2 certificates), proxy …".
fn net_line(net: &NetConfig) -> String {
    let mut parts = vec![
        format!(
            "connect timeout {}",
            humantime::format_duration(net.connect_timeout)
        ),
        format!(
            "idle timeout {}",
            humantime::format_duration(net.idle_timeout)
        ),
    ];
    if let Some(ca) = &net.ca_file {
        parts.push(format!(
            "CA file {} ({} certificate{}) and the usual roots",
            ca.path.display(),
            ca.certificates,
            if ca.certificates == 1 { "" } else { "s" }
        ));
    }
    parts.push(match &net.proxy {
        Some(proxy) => format!("proxy {proxy}"),
        None => "proxy from HTTPS_PROXY/HTTP_PROXY/NO_PROXY when set".to_string(),
    });
    parts.join(", ")
}

fn bandwidth_line(bandwidth: &BandwidthConfig) -> String {
    match (&bandwidth.schedule, bandwidth.limit) {
        (Some(schedule), _) => format!("by schedule, local time: {schedule}"),
        (None, Some(limit)) => format!("{}/s", bytesize::ByteSize(limit)),
        (None, None) => "unlimited".to_string(),
    }
}

fn folder_line(folder: &FolderConfig) -> String {
    let mut details = Vec::new();
    match &folder.target {
        Target::KifsDirectory { create, .. } => {
            details.push(format!("create: {}", if *create { "yes" } else { "no" }));
        }
        Target::RedivisTable(_) => {
            if folder.redivis.create_next_version {
                details.push("creates the next version when missing".to_string());
            }
            if !folder.redivis.parse.is_empty() {
                details.push(format!("parse: {}", folder.redivis.parse.describe()));
            }
        }
    }
    let target = folder.target.describe();
    details.push(format!(
        "settle {}",
        humantime::format_duration(folder.settle)
    ));
    if !folder.recursive {
        details.push("top level only".to_string());
    }
    let include = if folder.include.is_empty() {
        "*".to_string()
    } else {
        folder.include.join(", ")
    };
    details.push(format!("include {include}"));
    let exclude = if folder.exclude.is_empty() {
        "nothing".to_string()
    } else {
        folder.exclude.join(", ")
    };
    details.push(format!("exclude {exclude}"));
    format!(
        "{} → {} ({})",
        folder.path.display(),
        target,
        details.join(", ")
    )
}
