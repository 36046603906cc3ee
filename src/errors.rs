//! Core errors as PostgreSQL errors: each with a specific SQLSTATE, the
//! offending value in the message, every problem in the detail and the fix in
//! the hint. `#[pg_extern]` functions return `Result<_, ErrorReport>`.

use ic_proxy_core::address_map::MapError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

/// A map that does not validate: 22023 invalid_parameter_value.
#[track_caller]
pub fn map_error(context: &str, e: &MapError) -> ErrorReport {
    let mut report = ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{context}: {e}"),
        function_name(),
    )
    .set_hint(e.hint());
    if let Some(detail) = e.detail() {
        report = report.set_detail(detail);
    }
    report
}

#[track_caller]
pub fn error(code: PgSqlErrorCode, message: String, hint: &str) -> ErrorReport {
    ErrorReport::new(code, message, function_name()).set_hint(hint.to_string())
}

#[track_caller]
pub fn spi_error(e: pgrx::spi::Error) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("reading gp_segment_configuration failed: {e}"),
        function_name(),
    )
}

fn function_name() -> &'static str {
    "cloudberry_ic_proxy"
}
