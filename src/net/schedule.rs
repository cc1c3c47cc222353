//! The bandwidth timetable (`bandwidth_schedule`): which limit is in force at a given local
//! time.
//!
//! Entries, in rclone's spirit: windows `"[DAYS] HH:MM-HH:MM RATE"`, then one last entry
//! `"RATE"`, the default when no window matches. RATE is `off` (no limit) or a rate like
//! `"5MiB/s"`. DAYS is a comma-separated list of days (`Mon`) and ranges (`Mon-Fri`; `Fri-Mon`
//! wraps over the weekend); without it a window applies every day. A window whose end comes
//! before its start crosses midnight: `"Mon 22:00-06:00 1MiB/s"` runs from Monday 22:00 to
//! Tuesday 06:00. `24:00` ends a window at midnight.
//!
//! Evaluation ([`Schedule::in_force`]):
//! 1. Read the local weekday and minute of the day from the clock ([`LocalClock`]).
//! 2. The first window (in the order written) that contains that minute is in force.
//! 3. Otherwise the default entry is.
//!
//! A window holds from the first second of its start minute to just before its end minute,
//! so at 18:00 a `08:00-18:00` window no longer applies.

use std::fmt;

use crate::config::units::parse_rate;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// A moment of the local week, as much of it as the timetable needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// 0 ..= 1439.
    pub minute: u16,
}

impl WeekTime {
    /// `weekday` 0 = Monday; `hour:minute` of that day.
    pub fn new(weekday: u8, hour: u16, minute: u16) -> WeekTime {
        WeekTime {
            weekday: weekday % 7,
            minute: (hour * 60 + minute) % MINUTES_PER_DAY,
        }
    }
}

/// Where the local time comes from; injected so tests can stand at a boundary.
pub trait LocalClock: Send + Sync {
    fn now(&self) -> WeekTime;
}

/// The system's clock in the system's time zone (`TZ`, else `/etc/localtime`).
pub struct SystemClock;

impl LocalClock for SystemClock {
    fn now(&self) -> WeekTime {
        let now = jiff::ZonedDateTime::now();
        WeekTime {
            weekday: now.weekday().to_monday_zero_offset() as u8,
            minute: now.hour() as u16 * 60 + now.minute() as u16,
        }
    }
}

/// One `"[DAYS] HH:MM-HH:MM RATE"` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Indexed by weekday, 0 = Monday.
    days: [bool; 7],
    start: u16,
    /// Exclusive; 1440 for `24:00`.
    end: u16,
    limit: Option<u64>,
    text: String,
}

impl Window {
    fn contains(&self, at: WeekTime) -> bool {
        let day = usize::from(at.weekday);
        if self.start < self.end {
            return self.days[day] && (self.start..self.end).contains(&at.minute);
        }
        // Crosses midnight: the evening of a listed day, or the morning after one.
        let previous = (day + 6) % 7;
        (self.days[day] && at.minute >= self.start) || (self.days[previous] && at.minute < self.end)
    }
}

/// A parsed `bandwidth_schedule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    windows: Vec<Window>,
    default: Option<u64>,
    default_text: String,
}

/// The limit in force and the entry that put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// Bytes per second; `None` = no limit.
    pub limit: Option<u64>,
    /// The schedule entry as written, or `bandwidth_limit`.
    pub rule: Option<String>,
}

/// A schedule entry that does not parse: its position and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    pub index: usize,
    pub message: String,
}

impl Schedule {
    /// Parses the entries (module doc); every entry but the last is a window.
    pub fn parse(entries: &[&str]) -> Result<Schedule, EntryError> {
        let Some((last, windows)) = entries.split_last() else {
            return Err(EntryError {
                index: 0,
                message: "expected at least one entry: the default, e.g. [\"off\"]".to_string(),
            });
        };
        let windows = windows
            .iter()
            .enumerate()
            .map(|(index, text)| {
                parse_window(text).map_err(|message| EntryError { index, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default = parse_rate(last.trim()).map_err(|message| EntryError {
            index: entries.len() - 1,
            message: format!(
                "the last entry is the default and holds only a rate or \"off\": {message}"
            ),
        })?;
        Ok(Schedule {
            windows,
            default,
            default_text: last.trim().to_string(),
        })
    }

    /// The limit in force at `at` (module doc, steps 2–3).
    pub fn in_force(&self, at: WeekTime) -> InForce {
        match self.windows.iter().find(|window| window.contains(at)) {
            Some(window) => InForce {
                limit: window.limit,
                rule: Some(window.text.clone()),
            },
            None => InForce {
                limit: self.default,
                rule: Some(self.default_text.clone()),
            },
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for window in &self.windows {
            write!(f, "{:?}, ", window.text)?;
        }
        write!(f, "{:?}", self.default_text)
    }
}

const WINDOW_SHAPE: &str =
    "expected \"[DAYS] HH:MM-HH:MM RATE\" like \"Mon-Fri 08:00-18:00 5MiB/s\"";

fn parse_window(text: &str) -> Result<Window, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let shape = || format!("{WINDOW_SHAPE}, found \"{text}\"");
    // The times are the word with a ':'; the days come before it, the rate after.
    let at = words
        .iter()
        .position(|w| w.contains(':'))
        .ok_or_else(shape)?;
    let days = match &words[..at] {
        [] => [true; 7],
        [days] => parse_days(days)?,
        _ => return Err(shape()),
    };
    let (times, rate) = (words[at], words[at + 1..].join(" "));
    if rate.is_empty() {
        return Err(shape());
    }
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("{WINDOW_SHAPE}, found the times \"{times}\""))?;
    let (start, end) = (parse_clock(start)?, parse_clock(end)?);
    if start == MINUTES_PER_DAY {
        return Err("a window cannot start at 24:00 (write 00:00)".to_string());
    }
    if start == end {
        return Err(format!(
            "the window \"{times}\" is empty (start and end are the same time)"
        ));
    }
    Ok(Window {
        days,
        start,
        end,
        limit: parse_rate(&rate)?,
        text: words.join(" "),
    })
}

/// `HH:MM` from 00:00 to 24:00, as minutes of the day.
fn parse_clock(text: &str) -> Result<u16, String> {
    let bad = || format!("expected a time HH:MM from 00:00 to 24:00, found \"{text}\"");
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u16 = hours.parse().map_err(|_| bad())?;
    let minutes: u16 = minutes.parse().map_err(|_| bad())?;
    if minutes > 59 || hours * 60 + minutes > MINUTES_PER_DAY {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}

/// `Mon-Fri,Sun` → the days it names.
fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (day_index(first)?, day_index(last)?),
            None => (day_index(part)?, day_index(part)?),
        };
        let mut day = first;
        loop {
            days[day] = true;
            if day == last {
                break;
            }
            day = (day + 1) % 7;
        }
    }
    Ok(days)
}

fn day_index(name: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|day| day.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            format!(
                "expected days like \"Mon-Fri\" or \"Sat,Sun\" ({}), found \"{name}\"",
                DAY_NAMES.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const MON: u8 = 0;
    const FRI: u8 = 4;
    const SAT: u8 = 5;
    const SUN: u8 = 6;

    fn office_hours() -> Schedule {
        Schedule::parse(&["Mon-Fri 08:00-18:00 5MiB/s", "off"]).expect("the example parses")
    }

    fn limit(schedule: &Schedule, weekday: u8, hour: u16, minute: u16) -> Option<u64> {
        schedule
            .in_force(WeekTime::new(weekday, hour, minute))
            .limit
    }

    #[test]
    fn a_window_starts_at_its_start_minute_and_ends_before_its_end_minute() {
        let schedule = office_hours();
        assert_eq!(limit(&schedule, MON, 7, 59), None);
        assert_eq!(limit(&schedule, MON, 8, 0), Some(5 * MIB));
        assert_eq!(limit(&schedule, FRI, 17, 59), Some(5 * MIB));
        assert_eq!(limit(&schedule, FRI, 18, 0), None);
        assert_eq!(limit(&schedule, SAT, 12, 0), None, "not on the weekend");
        let rule = schedule.in_force(WeekTime::new(MON, 8, 0)).rule;
        assert_eq!(rule.as_deref(), Some("Mon-Fri 08:00-18:00 5MiB/s"));
        assert_eq!(
            schedule.in_force(WeekTime::new(MON, 7, 59)).rule.as_deref(),
            Some("off")
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let schedule =
            Schedule::parse(&["Fri 22:00-06:00 1MiB/s", "10MiB/s"]).expect("the entries parse");
        assert_eq!(limit(&schedule, FRI, 21, 59), Some(10 * MIB));
        assert_eq!(limit(&schedule, FRI, 22, 0), Some(MIB));
        assert_eq!(limit(&schedule, SAT, 5, 59), Some(MIB));
        assert_eq!(limit(&schedule, SAT, 6, 0), Some(10 * MIB));
        assert_eq!(
            limit(&schedule, MON, 1, 0),
            Some(10 * MIB),
            "Sunday is not listed"
        );
    }

    #[test]
    fn the_first_matching_window_wins_and_day_ranges_wrap() {
        let schedule = Schedule::parse(&[
            "Sat-Sun 00:00-24:00 off",
            "12:00-13:00 20MiB/s",
            "00:00-24:00 2MiB/s",
            "off",
        ])
        .expect("the entries parse");
        assert_eq!(limit(&schedule, SUN, 12, 30), None);
        assert_eq!(limit(&schedule, MON, 12, 30), Some(20 * MIB));
        assert_eq!(limit(&schedule, MON, 23, 59), Some(2 * MIB));
        let wrapped = Schedule::parse(&["Fri-Mon 09:00-10:00 1MiB/s", "off"]).expect("parses");
        for day in [FRI, SAT, SUN, MON] {
            assert_eq!(limit(&wrapped, day, 9, 0), Some(MIB), "day {day}");
        }
        assert_eq!(limit(&wrapped, 1, 9, 0), None, "Tuesday is outside Fri-Mon");
    }

    #[test]
    fn bad_entries_say_which_and_what_is_expected() {
        let cases: [(&[&str], usize, &str); 8] = [
            (&[], 0, "at least one entry"),
            (
                &["Mon-Fri 08:00-18:00 5MiB/s"],
                0,
                "the last entry is the default",
            ),
            (&["Mon-Fry 08:00-18:00 5MiB/s", "off"], 0, "\"Fry\""),
            (&["08:00-25:00 5MiB/s", "off"], 0, "\"25:00\""),
            (&["08:00 5MiB/s", "off"], 0, "\"08:00\""),
            (&["08:00-08:00 5MiB/s", "off"], 0, "empty"),
            (&["08:00-18:00 5 parsecs", "off"], 0, "\"5MiB/s\""),
            (
                &["08:00-18:00 5MiB/s", "Mon off"],
                1,
                "the last entry is the default",
            ),
        ];
        for (entries, index, wanted) in cases {
            let err = Schedule::parse(entries).expect_err("the schedule is invalid");
            assert_eq!(err.index, index, "{entries:?}: {err:?}");
            assert!(err.message.contains(wanted), "{entries:?}: {}", err.message);
        }
    }
}
