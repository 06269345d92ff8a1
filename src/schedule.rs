//! Schedules of delays: when to try a webhook delivery again (`FORWARD_RETRY_SECONDS`) and
//! when to ask Kling about a task that has sent no news (`KLING_POLL_SECONDS`).
//!
//! A schedule is a comma-separated list of delays in seconds. Deliveries stop once the list
//! is used up; polls repeat the last delay until the task is final or [`POLL_HORIZON_MS`]
//! has passed since it was created.

/// Tasks are polled for at most a day after they were created.
pub const POLL_HORIZON_MS: u64 = 24 * 60 * 60 * 1000;
const MAX_ENTRIES: usize = 50;
const MAX_DELAY_SECS: u32 = 7 * 24 * 60 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<u32>);

impl Schedule {
    /// Parses `"5,300,1800"`: 1 to 50 whole numbers of seconds, each at most a week.
    pub fn parse(raw: &str) -> Result<Schedule, &'static str> {
        let mut delays = Vec::new();
        for entry in raw.split(',').map(str::trim) {
            let seconds = entry
                .parse::<u32>()
                .ok()
                .filter(|s| *s <= MAX_DELAY_SECS)
                .ok_or("must be comma-separated whole seconds, each at most 604800")?;
            delays.push(seconds);
        }
        if delays.is_empty() || delays.len() > MAX_ENTRIES {
            return Err("must list 1 to 50 delays");
        }
        Ok(Schedule(delays))
    }

    /// The wait (ms) before attempt `done + 1`, after `done` attempts; `None` once the
    /// schedule is used up (`done` counts the first attempt, which has no delay).
    pub fn retry_delay_ms(&self, done: u32) -> Option<u64> {
        let index = usize::try_from(done).ok()?.checked_sub(1)?;
        self.0.get(index).map(|s| u64::from(*s) * 1000)
    }

    /// How many attempts the schedule allows in all (the first one and one per delay).
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// The wait (ms) before poll number `done + 1` since the last news; the last delay repeats.
    pub fn repeating_delay_ms(&self, done: u32) -> u64 {
        let index = usize::try_from(done).unwrap_or(usize::MAX).min(self.0.len() - 1);
        u64::from(self.0[index]) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(Schedule::parse(" 1, 2 ,3").unwrap(), Schedule(vec![1, 2, 3]));
        for bad in ["", "1,,2", "a", "-1", "1.5", "604801", "1;2"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(Schedule::parse(&["1"; 51].join(",")).is_err());
        assert!(Schedule::parse(&["1"; 50].join(",")).is_ok());
    }

    #[test]
    fn deliveries_follow_the_list_then_stop() {
        let schedule = crate::config::default_delays("FORWARD_RETRY_SECONDS");
        assert_eq!(schedule.attempts(), 8);
        assert_eq!(schedule.retry_delay_ms(0), None, "no attempt yet: the first is immediate");
        assert_eq!(schedule.retry_delay_ms(1), Some(5_000));
        assert_eq!(schedule.retry_delay_ms(2), Some(300_000));
        assert_eq!(schedule.retry_delay_ms(7), Some(36_000_000));
        assert_eq!(schedule.retry_delay_ms(8), None);
        let total: u64 = (1..8).filter_map(|n| schedule.retry_delay_ms(n)).sum();
        assert!((24 * 3600 * 1000..30 * 3600 * 1000).contains(&total), "about a day: {total}");
    }

    #[test]
    fn polls_repeat_the_last_delay() {
        let schedule = crate::config::default_delays("KLING_POLL_SECONDS");
        let delays: Vec<u64> = (0..8).map(|n| schedule.repeating_delay_ms(n) / 1000).collect();
        assert_eq!(delays, [30, 60, 120, 300, 600, 600, 600, 600]);
    }
}
