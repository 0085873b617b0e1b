//! `time_window`: allow or deny requests by weekday and time of day in a named time zone (IANA
//! database bundled in the binary, so results do not depend on the host's tzdata).
//!
//! ```yaml
//! plugins:
//!   - time_window:
//!       timezone: Europe/Berlin
//!       allow: [ { days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00" } ]
//!       deny:  [ { days: [sun], from: "02:00", to: "04:00" } ]     # maintenance
//! ```
//! A range with `to` not after `from` runs past midnight (`22:00`..`06:00`); the part after
//! midnight belongs to the day the range started. Deny wins; with `allow`, requests outside
//! every allowed range get 403. Daylight-saving changes follow the zone's rules.

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{failure, AuthFail};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "time_window")]
pub struct Config {
    /// IANA zone name, e.g. `Europe/Berlin` or `UTC`.
    #[serde(default = "default_tz")]
    pub timezone: String,
    #[serde(default)]
    pub allow: Vec<RangeConfig>,
    #[serde(default)]
    pub deny: Vec<RangeConfig>,
}

fn default_tz() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeConfig {
    /// `mon`..`sun`; every day when empty.
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM` (inclusive).
    pub from: String,
    /// `HH:MM` (exclusive); `24:00` is the end of the day.
    pub to: String,
}

#[derive(Debug, Clone)]
struct Range {
    /// Bit per weekday, Monday = bit 0.
    days: u8,
    from: u32,
    to: u32,
}

impl Range {
    /// Is this moment (weekday, minute of the day) inside the range?
    fn contains(&self, day: u8, minute: u32) -> bool {
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from < self.to {
            on(day) && minute >= self.from && minute < self.to
        } else {
            (on(day) && minute >= self.from) || (on((day + 6) % 7) && minute < self.to)
        }
    }
}

pub struct TimeWindow {
    tz: TimeZone,
    allow: Vec<Range>,
    deny: Vec<Range>,
    metrics: AuthMetrics,
}

fn minutes(s: &str) -> Result<u32, String> {
    if s == "24:00" {
        return Ok(24 * 60);
    }
    let t: Time = s
        .parse()
        .map_err(|_| format!("invalid time \"{s}\"; use HH:MM"))?;
    Ok(t.hour() as u32 * 60 + t.minute() as u32)
}

fn day_bit(s: &str) -> Result<u8, String> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| l.starts_with(d))
        .map(|i| i as u8)
        .ok_or_else(|| format!("invalid day \"{s}\"; use mon, tue, wed, thu, fri, sat, sun"))
}

fn compile(list: &[RangeConfig], path: &str, issues: &mut Vec<Issue>) -> Vec<Range> {
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut days = 0u8;
        for (j, d) in r.days.iter().enumerate() {
            match day_bit(d) {
                Ok(b) => days |= 1 << b,
                Err(e) => issues.push(Issue::new(format!("{p}.days[{j}]"), e)),
            }
        }
        if r.days.is_empty() {
            days = 0x7f;
        }
        match (minutes(&r.from), minutes(&r.to)) {
            (Ok(from), Ok(to)) if from != to => out.push(Range { days, from, to }),
            (Ok(_), Ok(_)) => issues.push(Issue::new(p, "`from` and `to` are equal")),
            (Err(e), _) => issues.push(Issue::new(format!("{p}.from"), e)),
            (_, Err(e)) => issues.push(Issue::new(format!("{p}.to"), e)),
        }
    }
    out
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(TimeWindow::new(self, b)?))
    }
}

impl TimeWindow {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<TimeWindow, Vec<Issue>> {
        let mut issues = Vec::new();
        let tz = TimeZone::get(&c.timezone)
            .map_err(|_| {
                issues.push(Issue::new(
                    format!("{}.timezone", b.path),
                    format!(
                        "unknown time zone \"{}\" (use an IANA name like Europe/Berlin)",
                        c.timezone
                    ),
                ))
            })
            .ok();
        let allow = compile(&c.allow, &format!("{}.allow", b.path), &mut issues);
        let deny = compile(&c.deny, &format!("{}.deny", b.path), &mut issues);
        if c.allow.is_empty() && c.deny.is_empty() {
            issues.push(Issue::new(b.path.clone(), "give `allow`, `deny` or both"));
        }
        match tz {
            Some(tz) if issues.is_empty() => Ok(TimeWindow {
                tz,
                allow,
                deny,
                metrics: AuthMetrics::new(b.shared.metrics(), b.route, "time_window"),
            }),
            _ => Err(issues),
        }
    }

    fn permits(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.tz.clone());
        let day = match local.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let minute = local.hour() as u32 * 60 + local.minute() as u32;
        !self.deny.iter().any(|r| r.contains(day, minute))
            && (self.allow.is_empty() || self.allow.iter().any(|r| r.contains(day, minute)))
    }
}

#[async_trait]
impl Plugin for TimeWindow {
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        if self.permits(jiff::Timestamp::now()) {
            return Ok(Flow::Continue);
        }
        self.metrics.failed(AuthFail::Denied);
        Ok(Flow::Respond(failure(ctx, AuthFail::Denied, "", "")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(
        tz: &str,
        allow: &[(&[&str], &str, &str)],
        deny: &[(&[&str], &str, &str)],
    ) -> TimeWindow {
        let conv = |l: &[(&[&str], &str, &str)]| {
            l.iter()
                .map(|(d, f, t)| RangeConfig {
                    days: d.iter().map(|s| s.to_string()).collect(),
                    from: f.to_string(),
                    to: t.to_string(),
                })
                .collect::<Vec<_>>()
        };
        let mut issues = Vec::new();
        TimeWindow {
            tz: TimeZone::get(tz).unwrap(),
            allow: compile(&conv(allow), "a", &mut issues),
            deny: compile(&conv(deny), "d", &mut issues),
            metrics: AuthMetrics::default(),
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn office_hours_in_a_named_zone_across_daylight_saving() {
        let w = window(
            "Europe/Berlin",
            &[(&["mon", "tue", "wed", "thu", "fri"], "08:00", "18:00")],
            &[],
        );
        // Monday 2026-03-30 07:30 UTC = 09:30 in Berlin (summer time, UTC+2).
        assert!(w.permits(at("2026-03-30T07:30:00Z")));
        // Monday 2026-03-23 07:30 UTC = 08:30 in Berlin (winter time, UTC+1).
        assert!(w.permits(at("2026-03-23T07:30:00Z")));
        // 06:30 UTC on that winter Monday = 07:30 Berlin: closed.
        assert!(!w.permits(at("2026-03-23T06:30:00Z")));
        // Saturday.
        assert!(!w.permits(at("2026-03-28T10:00:00Z")));
        // 18:00 is exclusive: 16:00 UTC in summer = 18:00 Berlin.
        assert!(!w.permits(at("2026-03-30T16:00:00Z")));
    }

    #[test]
    fn ranges_past_midnight_and_deny_wins() {
        let w = window(
            "UTC",
            &[(&["fri"], "22:00", "06:00")],
            &[(&["sat"], "02:00", "03:00")],
        );
        assert!(w.permits(at("2026-11-27T23:00:00Z")), "Friday 23:00");
        assert!(
            w.permits(at("2026-11-28T05:59:00Z")),
            "Saturday 05:59 belongs to Friday's range"
        );
        assert!(
            !w.permits(at("2026-11-28T02:30:00Z")),
            "denied maintenance slot"
        );
        assert!(!w.permits(at("2026-11-28T06:00:00Z")));
        assert!(!w.permits(at("2026-11-26T23:00:00Z")), "Thursday");
    }
}
