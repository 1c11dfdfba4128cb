//! Description of the machine a run was measured on (the `machine` object of the JSON).

use std::process::Command;

use serde::Serialize;

/// Facts about the host that make the numbers comparable between runs.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Kernel release (as `uname -r` prints it).
    pub kernel: String,
    /// Host name.
    pub hostname: String,
    /// Operating system name from `/etc/os-release`.
    pub os: String,
    /// `rustc --version` of the toolchain on the PATH, when there is one.
    pub rustc: Option<String>,
    /// Version of this benchmark binary.
    pub bench_version: String,
    /// Seconds since the Unix epoch when the run started.
    pub unix_time: u64,
    /// 1-minute load average when the run started (other work skews the numbers).
    pub load_average_1m: Option<f64>,
}

impl Machine {
    /// Gathers the machine description; fields that cannot be read say `unknown`.
    pub fn detect() -> Self {
        Self {
            cpu_model: cpu_model().unwrap_or_else(unknown),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: kernel().unwrap_or_else(unknown),
            hostname: read_trimmed("/proc/sys/kernel/hostname")
                .or_else(|| command_output("uname", &["-n"]))
                .unwrap_or_else(unknown),
            os: os_name().unwrap_or_else(unknown),
            rustc: command_output("rustc", &["--version"]),
            bench_version: env!("CARGO_PKG_VERSION").to_string(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            load_average_1m: read_trimmed("/proc/loadavg")
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        }
    }
}

fn unknown() -> String {
    "unknown".to_string()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_model(&info)
}

/// Extracts the first `model name` (x86) or `Model`/`Hardware` (ARM) line of cpuinfo.
fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "cpu model"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        })
}

fn kernel() -> Option<String> {
    command_output("uname", &["-r"]).or_else(|| read_trimmed("/proc/sys/kernel/osrelease"))
}

fn os_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_parsing() {
        let info =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n";
        assert_eq!(
            parse_cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU")
        );
        assert_eq!(parse_cpu_model("nothing here"), None);
    }

    #[test]
    fn detect_fills_fields() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(!m.kernel.is_empty());
    }
}
