//! The `--json` file: `{"machine": {...}, "results": [ROW, ...]}`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::Machine;
use crate::row::Row;

/// Figures of a run that are not rows (an optional addition to the contract: readers that
/// only know `machine` and `results` are unaffected).
#[derive(Debug, Default, Serialize)]
pub struct Extras {
    /// User-space bytes per idle dataplane connection (both ends), when measured.
    pub dataplane_idle_connection_bytes: Option<u64>,
}

/// The document written by `--json` (a stable contract; see [`Row`]).
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The machine the run was measured on.
    pub machine: &'a Machine,
    /// Raw measurements, one per row; ratios are not stored.
    pub results: &'a [Row],
    /// Figures that are not rows.
    pub extras: &'a Extras,
}

/// Serializes the report to a JSON string.
pub fn to_string(machine: &Machine, rows: &[Row], extras: &Extras) -> Result<String> {
    serde_json::to_string_pretty(&Report {
        machine,
        results: rows,
        extras,
    })
    .context("serializing the results")
}

/// Writes the report to `path`.
pub fn write(path: &Path, machine: &Machine, rows: &[Row], extras: &Extras) -> Result<()> {
    let text = to_string(machine, rows, extras)?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(text.as_bytes())
        .and_then(|_| w.write_all(b"\n"))
        .and_then(|_| w.flush())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_fields_present_and_null() {
        let machine = Machine::detect();
        let mut row = Row::new("iperf3", "stream", 1 << 20, 1);
        row.gbit_per_sec = Some(20.0);
        let text = to_string(&machine, &[row], &Extras::default()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for key in ["cpu_model", "cores", "kernel", "hostname", "os"] {
            assert!(v["machine"].get(key).is_some(), "{key}");
        }
        let r = &v["results"][0];
        assert_eq!(r["system"], "iperf3");
        assert_eq!(r["size_bytes"], 1 << 20);
        assert_eq!(r["gbit_per_sec"], 20.0);
        assert!(r["p50_us"].is_null());
        assert!(r.get("cdf").is_none());
    }
}
