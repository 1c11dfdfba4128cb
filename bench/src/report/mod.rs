//! Output of a run: the text table, the JSON file and the charts.

pub mod json;
pub mod plot;
pub mod table;
