//! cloudberry_ic_proxy: Cloudberry's interconnect proxy as a PostgreSQL
//! extension. This crate is only the PostgreSQL shell (settings, SQL
//! functions, the background worker); the proxy itself is `ic_proxy_core`,
//! which never calls PostgreSQL.

// SQL functions return Result<_, ErrorReport> so errors carry a SQLSTATE, a
// detail and a hint; the report is large by design and only built on errors.
#![allow(clippy::result_large_err)]
// pgrx needs the column list of a TableIterator spelled out in the signature.
#![allow(clippy::type_complexity)]

use pgrx::prelude::*;

mod api;
mod errors;
mod gucs;
mod shmem;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!(
    "../sql/gp_segment_configuration.sql",
    name = "gp_segment_configuration"
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cloudberry_ic_proxy must be loaded at server start",
            "_PG_init",
        )
        .set_hint(
            "Add it to postgresql.conf: shared_preload_libraries = 'cloudberry_ic_proxy', then restart the server.",
        )
        .report(PgLogLevel::ERROR);
    }
    gucs::init();
    shmem::init();
    worker::register();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn check_reports_nothing_for_a_valid_map() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM ic_proxy_addresses_check('1:-1:cdw:7000, 2:0:sdw1:7002')",
        );
        assert_eq!(n, Ok(Some(0)));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'cloudberry_ic_proxy'"]
    }
}
