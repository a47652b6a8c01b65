//! Reading pgbench's summary.

use anyhow::{Context, Result};

/// The figures of one pgbench run, as pgbench printed them.
#[derive(Clone, Debug, PartialEq)]
pub struct PgbenchSummary {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Transactions completed.
    pub transactions: u64,
    /// Mean transaction latency in milliseconds.
    pub latency_ms_mean: f64,
}

impl PgbenchSummary {
    /// Parses the report pgbench prints at the end of a run.
    pub fn parse(report: &str) -> Result<PgbenchSummary> {
        let field = |prefix: &str| -> Result<&str> {
            report
                .lines()
                .find_map(|line| line.trim().strip_prefix(prefix))
                .map(str::trim)
                .with_context(|| format!("pgbench report has no line starting with {prefix:?}"))
        };
        let first_word = |text: &str| text.split_whitespace().next().unwrap_or("").to_owned();
        let tps = first_word(field("tps = ")?);
        let transactions = first_word(field("number of transactions actually processed:")?);
        let latency = first_word(field("latency average = ")?);
        Ok(PgbenchSummary {
            tps: tps.parse().with_context(|| format!("parse tps {tps:?}"))?,
            transactions: transactions
                .parse()
                .with_context(|| format!("parse transaction count {transactions:?}"))?,
            latency_ms_mean: latency
                .parse()
                .with_context(|| format!("parse latency {latency:?}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(report: &str, expected: Option<&PgbenchSummary>) {
        let parsed = PgbenchSummary::parse(report).ok();
        assert_eq!(parsed.as_ref(), expected, "report:\n{report}");
    }

    #[test]
    fn parses_pgbench_17_report() {
        check(
            "pgbench (17.11)\ntransaction type: <builtin: TPC-B (sort of)>\nscaling factor: 10\n\
             query mode: simple\nnumber of clients: 4\nnumber of threads: 1\n\
             maximum number of tries: 1\nduration: 10 s\n\
             number of transactions actually processed: 12345\n\
             number of failed transactions: 0 (0.000%)\nlatency average = 3.241 ms\n\
             initial connection time = 10.512 ms\ntps = 1234.567890 (without initial connection time)\n",
            Some(&PgbenchSummary {
                tps: 1234.56789,
                transactions: 12345,
                latency_ms_mean: 3.241,
            }),
        );
    }

    #[test]
    fn rejects_a_truncated_report() {
        check(
            "pgbench (17.11)\nnumber of transactions actually processed: 5\n",
            None,
        );
        check(
            "tps = fast\nnumber of transactions actually processed: 5\nlatency average = 1 ms\n",
            None,
        );
    }
}
