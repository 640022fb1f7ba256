//! `stepgate replay`: what would a candidate policy set have answered to
//! the decisions in a decision log? Exits like diff(1): 0 when nothing
//! changed, 1 when something did, 2 when the replay could not be trusted
//! (unreadable lines, newer or unknown log versions, a bad argument).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use stepgate::policy::PolicySnapshot;
use stepgate::replay::{Comparison, Filter};

/// Nothing changed.
pub const UNCHANGED: u8 = 0;
/// At least one decision would be answered differently.
pub const CHANGED: u8 = 1;
/// The replay could not run, or some lines could not be replayed.
pub const TROUBLE: u8 = 2;

/// Problems printed one by one; the rest are counted.
const PROBLEMS_SHOWN: usize = 20;

#[derive(Args)]
pub struct ReplayArgs {
    /// A decision log (JSON lines, as `decision_log` writes it); `-` reads
    /// standard input.
    #[arg(long)]
    pub log: PathBuf,
    /// The candidate policy directory.
    #[arg(long)]
    pub policies: PathBuf,
    /// Only this journey.
    #[arg(long)]
    pub journey: Option<String>,
    /// Only decisions at or after this time: RFC 3339
    /// (`2026-11-22T00:00:00Z`) or a duration before now (`7d`, `12h`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only decisions before this time, in the same forms.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Print the comparison as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// An RFC 3339 time (any offset, `T`/`t`, `Z`/`z`), or a duration before
/// now.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Some(time) = rfc3339(text) {
        return Ok(time);
    }
    let ago: Duration = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is neither an RFC 3339 time (2026-11-22T00:00:00Z) nor a duration (7d)")
    })?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("`{text}` reaches back before the clock starts"))
}

/// Reads an RFC 3339 time with any UTC offset: the offset is taken off
/// and the rest read as UTC.
fn rfc3339(text: &str) -> Option<SystemTime> {
    let upper = text.to_ascii_uppercase();
    if let Some(local) = upper.strip_suffix('Z') {
        return humantime::parse_rfc3339_weak(&format!("{local}Z")).ok();
    }
    // `±HH:MM` at the end, after the time of day.
    let (local, offset) = upper.split_at_checked(upper.len().checked_sub(6)?)?;
    let (sign, hours, minutes) = match offset.as_bytes() {
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |d: &u8| d.is_ascii_digit().then(|| u64::from(d - b'0'));
            (
                *sign,
                digit(h1)? * 10 + digit(h2)?,
                digit(m1)? * 10 + digit(m2)?,
            )
        }
        _ => return None,
    };
    if hours > 23 || minutes > 59 || !local.contains('T') {
        return None;
    }
    let as_utc = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    // 12:00+01:00 is 11:00Z.
    if sign == b'+' {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    }
}

pub fn run(args: &ReplayArgs) -> ExitCode {
    match replay(args) {
        Ok(code) => ExitCode::from(code),
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(TROUBLE)
        }
    }
}

fn replay(args: &ReplayArgs) -> miette::Result<u8> {
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since >= until
    {
        return Err(miette::miette!(
            "`--since` is not before `--until`: the window holds no time"
        ));
    }
    let candidate = PolicySnapshot::load(&args.policies)?;
    let filter = Filter {
        journey: args.journey.clone(),
        since: args.since,
        until: args.until,
    };
    let comparison = if args.log.as_os_str() == "-" {
        stepgate::replay::replay(std::io::stdin().lock(), &candidate, &filter)
    } else {
        let file = std::fs::File::open(&args.log)
            .map_err(|e| miette::miette!("cannot read `{}`: {e}", args.log.display()))?;
        stepgate::replay::replay(
            std::io::BufReader::with_capacity(1 << 20, file),
            &candidate,
            &filter,
        )
    }
    .map_err(|e| miette::miette!("cannot read `{}`: {e}", args.log.display()))?;
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, &comparison)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        table(&mut out, &comparison, args, candidate.version())
    };
    printed.map_err(|e| miette::miette!("cannot write the comparison: {e}"))?;
    for problem in comparison.problems.iter().take(PROBLEMS_SHOWN) {
        eprintln!(
            "{}:{}: {}",
            args.log.display(),
            problem.line,
            problem.message
        );
    }
    if comparison.problems.len() > PROBLEMS_SHOWN {
        eprintln!(
            "... and {} more lines that could not be replayed",
            comparison.problems.len() - PROBLEMS_SHOWN
        );
    }
    if comparison.replayed == 0 && comparison.problems.is_empty() {
        // A gate that compared nothing has checked nothing: a typo in a
        // journey or a window, or the wrong file.
        eprintln!(
            "nothing was replayed: the log holds no decision{}",
            if args.journey.is_some() || args.since.is_some() || args.until.is_some() {
                " that passes the filter"
            } else {
                ""
            }
        );
    }
    Ok(
        if !comparison.problems.is_empty() || comparison.replayed == 0 {
            TROUBLE
        } else if comparison.changed() > 0 {
            CHANGED
        } else {
            UNCHANGED
        },
    )
}

/// The comparison as a table: one row per journey, live and candidate
/// outcome, changed rows marked and followed by examples and the
/// candidate's reasons.
fn table(
    out: &mut impl std::io::Write,
    c: &Comparison,
    args: &ReplayArgs,
    version: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "replayed {} from {} against {} (version {version})",
        decisions(c.replayed),
        args.log.display(),
        args.policies.display()
    )?;
    if c.filtered_out > 0 || c.other_kinds > 0 {
        writeln!(
            out,
            "left out: {} outside the filter, {} of other kinds (reports, refusals)",
            decisions(c.filtered_out),
            plural(c.other_kinds, "line")
        )?;
    }
    if c.cells.is_empty() {
        return Ok(());
    }
    let width = |f: fn(&stepgate::replay::CellKey) -> &str, title: &str| {
        c.cells
            .keys()
            .map(|k| f(k).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (jw, lw, cw) = (
        width(|k| &k.journey, "journey"),
        width(|k| &k.live, "live"),
        width(|k| &k.candidate, "candidate"),
    );
    writeln!(out)?;
    writeln!(
        out,
        "{:<jw$}  {:<lw$}  {:<cw$}  {:>9}",
        "journey", "live", "candidate", "decisions"
    )?;
    for (key, cell) in &c.cells {
        let changed = key.live != key.candidate;
        writeln!(
            out,
            "{:<jw$}  {:<lw$}  {:<cw$}  {:>9}{}",
            key.journey,
            key.live,
            key.candidate,
            cell.count,
            if changed { "  CHANGED" } else { "" }
        )?;
        if changed {
            writeln!(out, "    e.g. {}", cell.examples.join(", "))?;
            for reason in &cell.candidate_reasons {
                writeln!(out, "    candidate: {reason}")?;
            }
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "{} of {} would change",
        c.changed(),
        decisions(c.replayed)
    )
}

/// `1 decision`, `2 decisions`.
fn decisions(n: u64) -> String {
    plural(n, "decision")
}

/// `1 line`, `2 lines`.
fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
