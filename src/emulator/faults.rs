//! Injected faults shared by both emulated services. (Skeleton.)

#[derive(Debug, Clone, clap::Args)]
pub struct FaultOptions {
    /// Share of requests answered 500/502/503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests whose connection is closed mid-request with no answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Seed for the fault generator, so a run can be reproduced.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}
