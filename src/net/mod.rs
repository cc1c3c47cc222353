//! How upsync talks to its remotes over real networks.
//!
//! - `schedule`: the bandwidth timetable and the local clock it reads.

pub mod schedule;
