//! Every default of the configuration in one place.

use super::types::{Dur, Size};

pub const DEFAULT_THREADS: usize = 2;

pub fn version() -> u32 {
    1
}
pub fn yes() -> bool {
    true
}
pub fn threads() -> usize {
    DEFAULT_THREADS
}
pub fn grace_period() -> Dur {
    Dur::secs(5)
}
pub fn graceful_shutdown_timeout() -> Dur {
    Dur::secs(5)
}
pub fn pid_file() -> String {
    "/run/postern/postern.pid".into()
}
pub fn upgrade_sock() -> String {
    "/run/postern/upgrade.sock".into()
}
pub fn max_request_body() -> Size {
    Size(10 << 20)
}
pub fn keepalive_timeout() -> Dur {
    Dur::secs(60)
}
pub fn client_header_timeout() -> Dur {
    Dur::secs(10)
}
pub fn client_read_timeout() -> Dur {
    Dur::secs(10)
}
pub fn client_write_timeout() -> Dur {
    Dur::secs(30)
}
pub fn max_header_count() -> usize {
    100
}
pub fn max_header_size() -> Size {
    Size(32 << 10)
}
pub fn upstream_pool_size() -> usize {
    256
}
pub fn admin_addr() -> String {
    "127.0.0.1:9901".into()
}
pub fn weight() -> u32 {
    1
}
pub fn resolve_interval() -> Dur {
    Dur::secs(30)
}
pub fn health_path() -> String {
    "/healthz".into()
}
pub fn expected_statuses() -> Vec<u16> {
    vec![200]
}
pub fn health_interval() -> Dur {
    Dur::secs(5)
}
pub fn health_timeout() -> Dur {
    Dur::secs(1)
}
pub fn healthy_after() -> u32 {
    2
}
pub fn unhealthy_after() -> u32 {
    3
}
pub fn passive_unhealthy_after() -> u32 {
    5
}
pub fn eject_for() -> Dur {
    Dur::secs(30)
}
pub fn passive_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
pub fn connect_timeout() -> Dur {
    Dur::secs(2)
}
pub fn read_timeout() -> Dur {
    Dur::secs(30)
}
pub fn write_timeout() -> Dur {
    Dur::secs(30)
}
pub fn idle_timeout() -> Dur {
    Dur::secs(60)
}
pub fn retry_attempts() -> u32 {
    2
}
pub fn retry_backoff() -> Dur {
    Dur::millis(0)
}
pub fn access_log_path() -> String {
    "stdout".into()
}
pub fn redact_query() -> Vec<String> {
    [
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "signature",
    ]
    .map(String::from)
    .to_vec()
}

pub fn cache_memory() -> Size {
    Size(256 << 20)
}
pub fn cache_max_object() -> Size {
    Size(8 << 20)
}
pub fn cache_lock_timeout() -> Dur {
    Dur::secs(5)
}

pub fn sample_ratio() -> f64 {
    1.0
}
pub fn otlp_timeout() -> Dur {
    Dur::secs(2)
}
pub fn service_name() -> String {
    "postern".into()
}

pub fn cb_failure_ratio() -> f64 {
    0.5
}
pub fn cb_min_requests() -> u32 {
    20
}
pub fn cb_window() -> Dur {
    Dur::secs(10)
}
pub fn cb_consecutive() -> u32 {
    5
}
pub fn cb_open_for() -> Dur {
    Dur::secs(10)
}
pub fn cb_max_open_for() -> Dur {
    Dur::secs(300)
}
pub fn cb_half_open() -> u32 {
    3
}
pub fn fallback_status() -> u16 {
    200
}
pub fn budget_ratio() -> f64 {
    0.2
}
pub fn budget_window() -> Dur {
    Dur::secs(10)
}
pub fn budget_min() -> f64 {
    3.0
}
/// Pingora's retry buffer (`BODY_BUF_LIMIT`): a body up to this size can be sent again.
pub const RETRY_BUFFER: u64 = 64 * 1024;
pub fn retry_max_body() -> Size {
    Size(RETRY_BUFFER)
}
pub fn error_page_type() -> String {
    "application/json".into()
}
pub fn mirror_percent() -> f64 {
    100.0
}
pub fn mirror_max_body() -> Size {
    Size(64 * 1024)
}
pub fn mirror_in_flight() -> usize {
    100
}
