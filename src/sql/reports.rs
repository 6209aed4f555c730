//! Canned reports: the `.sql` files under `query/reports/`, run by name with a
//! period. `{{from}}` and `{{to}}` in a file become timestamp literals built
//! from validated numbers, never from the caller's text.

use super::SqlError;

/// A report: its name and SQL text.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! report {
    ($name:literal) => {
        Report { name: $name, sql: include_str!(concat!("../../query/reports/", $name, ".sql")) }
    };
}

pub const REPORTS: &[Report] = &[
    report!("top_talkers"),
    report!("volume_per_network_per_day"),
    report!("conversations_per_employee"),
    report!("external_contacts"),
    report!("off_hours"),
    report!("storage_growth"),
];

pub fn names() -> Vec<&'static str> {
    REPORTS.iter().map(|r| r.name).collect()
}

/// The first comment lines of a report, as its description.
pub fn description(r: &Report) -> String {
    r.sql
        .lines()
        .take_while(|l| l.starts_with("--"))
        .map(|l| l.trim_start_matches("--").trim())
        .collect::<Vec<_>>()
        .join(" ")
}

fn timestamp(nanos: i64) -> String {
    format!("arrow_cast({nanos}, 'Timestamp(Nanosecond, Some(\"UTC\"))')")
}

/// The SQL of report `name` over `[from, to)` (Unix nanoseconds; open if `None`).
pub fn render(name: &str, from: Option<i64>, to: Option<i64>) -> Result<String, SqlError> {
    let r = REPORTS.iter().find(|r| r.name == name).ok_or_else(|| {
        SqlError::Refused(format!("no report named {name:?}; the reports are {}", names().join(", ")))
    })?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(SqlError::Refused("`from` must be before `to`".into()));
        }
    }
    Ok(r.sql
        .replace("{{from}}", &timestamp(from.unwrap_or(i64::MIN)))
        .replace("{{to}}", &timestamp(to.unwrap_or(i64::MAX))))
}
