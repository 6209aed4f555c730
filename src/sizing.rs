//! The storage sizing formula of IM Director's planning guide, as printed and
//! corrected, and the archive's own measurements beside it.
//!
//! As printed:
//!
//! ```text
//! BytesConv = 60 × AvgDur × MsgRate × MsgLength + 150
//! BytesUser = BytesConv × AvgNumber
//! daily MB  = BytesUser × AvgNumber × Seats × (1 − Compression) / 1,048,576
//! monthly   = 30 × daily
//! ```
//!
//! with MsgRate 0.1 messages/s and Compression 0.05 by default, and the rule
//! of thumb of 0.5 MB per user per month. Two slips: `AvgNumber` (conversations
//! per user per day) is counted twice, and `60 × AvgDur` turns minutes into
//! seconds while the guide's table gives `AvgDur` in seconds. The consistent
//! form counts conversations once and takes `AvgDur` in seconds:
//!
//! ```text
//! BytesConv = AvgDur × MsgRate × MsgLength + 150
//! daily MB  = BytesConv × AvgNumber × Seats × (1 − Compression) / 1,048,576
//! ```

use serde::{Deserialize, Serialize};

pub const MB: f64 = 1_048_576.0;
/// The guide's rule of thumb.
pub const RULE_OF_THUMB_MB_PER_USER_MONTH: f64 = 0.5;
pub const DEFAULT_MSG_RATE: f64 = 0.1;
pub const DEFAULT_COMPRESSION: f64 = 0.05;
/// Bytes the guide adds per conversation (its header and participants).
pub const CONVERSATION_OVERHEAD: f64 = 150.0;

/// The formula's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizingInput {
    /// Users archived.
    pub seats: f64,
    /// Average conversation duration, in seconds (the guide's table's unit).
    pub avg_dur_secs: f64,
    /// Messages per second within a conversation.
    pub msg_rate: f64,
    /// Average message length, in bytes.
    pub msg_length: f64,
    /// Conversations per user per day.
    pub avg_number: f64,
    /// Fraction saved by compression (0.05 = 5 %).
    pub compression: f64,
}

/// One evaluation of the formula.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub bytes_per_conversation: f64,
    pub bytes_per_user_per_day: f64,
    pub daily_mb: f64,
    pub monthly_mb: f64,
    pub mb_per_user_per_month: f64,
}

/// Both readings of the formula and the rule of thumb.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sizing {
    pub input: SizingInput,
    /// As printed: `60 × AvgDur` and `AvgNumber` squared.
    pub literal: Estimate,
    /// `AvgDur` in seconds, `AvgNumber` once.
    pub consistent: Estimate,
    /// 0.5 MB per user per month, for `seats` users.
    pub rule_of_thumb_monthly_mb: f64,
}

impl SizingInput {
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("seats", self.seats),
            ("avg_dur_secs", self.avg_dur_secs),
            ("msg_rate", self.msg_rate),
            ("msg_length", self.msg_length),
            ("avg_number", self.avg_number),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a finite number ≥ 0, not {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.compression) {
            return Err(format!("compression is a fraction in [0, 1), not {}", self.compression));
        }
        Ok(())
    }

    /// The formula as printed.
    pub fn literal(&self) -> Estimate {
        let conv = 60.0 * self.avg_dur_secs * self.msg_rate * self.msg_length + CONVERSATION_OVERHEAD;
        let user = conv * self.avg_number;
        let daily = user * self.avg_number * self.seats * (1.0 - self.compression) / MB;
        self.estimate(conv, user * self.avg_number * (1.0 - self.compression), daily)
    }

    /// The dimensionally consistent formula.
    pub fn consistent(&self) -> Estimate {
        let conv = self.avg_dur_secs * self.msg_rate * self.msg_length + CONVERSATION_OVERHEAD;
        let user = conv * self.avg_number * (1.0 - self.compression);
        let daily = user * self.seats / MB;
        self.estimate(conv, user, daily)
    }

    fn estimate(&self, conv: f64, per_user_day: f64, daily_mb: f64) -> Estimate {
        Estimate {
            bytes_per_conversation: conv,
            bytes_per_user_per_day: per_user_day,
            daily_mb,
            monthly_mb: 30.0 * daily_mb,
            mb_per_user_per_month: 30.0 * per_user_day / MB,
        }
    }

    pub fn sizing(&self) -> Sizing {
        Sizing {
            input: *self,
            literal: self.literal(),
            consistent: self.consistent(),
            rule_of_thumb_monthly_mb: RULE_OF_THUMB_MB_PER_USER_MONTH * self.seats,
        }
    }
}

/// Days until `free_bytes` are used at `growth_bytes_per_day`; `None` if it does not grow.
pub fn days_until_full(free_bytes: f64, growth_bytes_per_day: f64) -> Option<f64> {
    (growth_bytes_per_day > 0.0).then(|| free_bytes / growth_bytes_per_day)
}

/// Bytes held once retention deletes as much as arrives each day.
pub fn steady_state_bytes(growth_bytes_per_day: f64, retention_days: f64) -> f64 {
    growth_bytes_per_day * retention_days
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn the_formula_by_hand() {
        // 1000 seats, 300 s conversations at 0.1 msg/s of 50 bytes, 4 a day, 5 % compression.
        let i = SizingInput {
            seats: 1000.0,
            avg_dur_secs: 300.0,
            msg_rate: 0.1,
            msg_length: 50.0,
            avg_number: 4.0,
            compression: 0.05,
        };
        let lit = i.literal();
        // 60 × 300 × 0.1 × 50 + 150 = 90,150 B per conversation.
        assert!(close(lit.bytes_per_conversation, 90_150.0));
        // × 4 × 4 × 1000 × 0.95 / 1,048,576 = 1,370,280,000 / 1,048,576 = 1306.800842... MB a day.
        assert!(close(lit.daily_mb, 1_370_280_000.0 / 1_048_576.0), "{}", lit.daily_mb);
        assert!(close(lit.monthly_mb, 30.0 * 1_370_280_000.0 / 1_048_576.0));
        let con = i.consistent();
        // 300 × 0.1 × 50 + 150 = 1,650 B per conversation; × 4 × 0.95 = 6,270 B per user per day.
        assert!(close(con.bytes_per_conversation, 1_650.0));
        assert!(close(con.bytes_per_user_per_day, 6_270.0));
        // × 1000 / 1,048,576 = 5.979537... MB a day; 30 × 6,270 / 1,048,576 = 0.179386 MB per user per month.
        assert!(close(con.daily_mb, 6_270_000.0 / 1_048_576.0));
        assert!(close(con.mb_per_user_per_month, 188_100.0 / 1_048_576.0));
        let s = i.sizing();
        assert!(close(s.rule_of_thumb_monthly_mb, 500.0));
        // Here the literal reading is 218.5 × the consistent one.
        assert!(close(lit.daily_mb / con.daily_mb, 1_370_280_000.0 / 6_270_000.0));
    }

    #[test]
    fn no_messages_leaves_the_overhead_and_bad_inputs_are_refused() {
        let i = SizingInput {
            seats: 10.0,
            avg_dur_secs: 0.0,
            msg_rate: DEFAULT_MSG_RATE,
            msg_length: 80.0,
            avg_number: 2.0,
            compression: 0.0,
        };
        assert!(close(i.literal().daily_mb, 150.0 * 2.0 * 2.0 * 10.0 / MB));
        assert!(close(i.consistent().daily_mb, 150.0 * 2.0 * 10.0 / MB));
        assert!(SizingInput { compression: 1.0, ..i }.check().is_err());
        assert!(SizingInput { seats: -1.0, ..i }.check().is_err());
        assert!(SizingInput { msg_length: f64::NAN, ..i }.check().is_err());
        assert!(i.check().is_ok());
    }

    #[test]
    fn forecasts() {
        assert_eq!(days_until_full(1000.0, 10.0), Some(100.0));
        assert_eq!(days_until_full(1000.0, 0.0), None);
        assert!(close(steady_state_bytes(2.5e6, 365.0 * 7.0), 2.5e6 * 2555.0));
    }
}
