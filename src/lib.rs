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
mod log_bridge;
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
    use std::ffi::{c_char, c_void, CStr, CString};

    use pgrx::prelude::*;

    type Hook = unsafe extern "C-unwind" fn(
        *mut *mut c_char,
        *mut *mut c_void,
        pg_sys::GucSource::Type,
    ) -> bool;

    /// Runs a check hook as guc.c does; returns its verdict, message and hint.
    fn run_hook(hook: Hook, value: &str) -> (bool, Option<String>, Option<String>) {
        let text = |p: *mut c_char| {
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        };
        unsafe {
            pg_sys::GUC_check_errmsg_string = std::ptr::null_mut();
            pg_sys::GUC_check_errhint_string = std::ptr::null_mut();
            let c = CString::new(value).unwrap();
            let mut v = pg_sys::pstrdup(c.as_ptr());
            let ok = hook(&mut v, std::ptr::null_mut(), pg_sys::GucSource::PGC_S_TEST);
            (
                ok,
                text(pg_sys::GUC_check_errmsg_string),
                text(pg_sys::GUC_check_errhint_string),
            )
        }
    }

    #[pg_test]
    fn the_addresses_hook_accepts_a_map_and_names_the_bad_entry_of_another() {
        assert!(run_hook(crate::gucs::check_addresses, "1:-1:cdw:7000, 2:0:sdw1:7002").0);
        assert!(run_hook(crate::gucs::check_addresses, "").0);
        let (ok, msg, hint) =
            run_hook(crate::gucs::check_addresses, "1:-1:cdw:7000,2:0:sdw1:99999");
        assert!(!ok);
        assert_eq!(
            msg.as_deref(),
            Some("invalid ic_proxy.addresses: entry 2 \"2:0:sdw1:99999\": port 99999 is outside 1..65535")
        );
        assert!(hint.is_some_and(|h| !h.is_empty()));
    }

    type IntHook =
        unsafe extern "C-unwind" fn(*mut i32, *mut *mut c_void, pg_sys::GucSource::Type) -> bool;

    /// Runs an integer check hook as guc.c does (in a session, as ALTER
    /// SYSTEM does); returns its verdict and message.
    fn run_int_hook(hook: IntHook, value: i32) -> (bool, Option<String>) {
        unsafe {
            pg_sys::GUC_check_errmsg_string = std::ptr::null_mut();
            let mut v = value;
            let ok = hook(&mut v, std::ptr::null_mut(), pg_sys::GucSource::PGC_S_FILE);
            let msg = pg_sys::GUC_check_errmsg_string;
            (
                ok,
                (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned()),
            )
        }
    }

    #[pg_test]
    fn the_flow_hooks_refuse_a_triple_that_cannot_work() {
        use crate::gucs::{check_flow_ack_interval, check_flow_pause, check_flow_resume};
        // In force (and in no file): 100 / 30 / 10.
        assert!(run_int_hook(check_flow_resume, 99).0);
        assert!(run_int_hook(check_flow_pause, 31).0);
        assert!(run_int_hook(check_flow_ack_interval, 31).0);
        assert_eq!(
            run_int_hook(check_flow_resume, 100),
            (
                false,
                Some("ic_proxy.flow_resume_threshold (100) must be below ic_proxy.flow_pause_threshold (100)".into())
            )
        );
        assert!(!run_int_hook(check_flow_pause, 30).0);
        assert_eq!(
            run_int_hook(check_flow_ack_interval, 32),
            (
                false,
                Some("ic_proxy.flow_ack_interval (32) must not exceed ic_proxy.flow_resume_threshold + 1 (31)".into())
            )
        );
    }

    #[pg_test(error = "dbid 70000 is outside 1..32767")]
    fn ping_refuses_a_dbid_out_of_range() {
        let _ = Spi::get_one::<i64>("SELECT count(*) FROM ic_proxy_ping(70000)");
    }

    #[pg_test]
    fn the_socket_dir_hook_wants_a_short_absolute_path() {
        assert!(run_hook(crate::gucs::check_socket_dir, "/tmp").0);
        let (ok, msg, _) = run_hook(crate::gucs::check_socket_dir, "tmp");
        assert!(!ok);
        assert_eq!(
            msg.as_deref(),
            Some("invalid ic_proxy.socket_dir: \"tmp\" is not an absolute path")
        );
        let long = format!("/{}", "d".repeat(80));
        assert!(!run_hook(crate::gucs::check_socket_dir, &long).0);
        assert!(
            run_hook(
                crate::gucs::check_socket_dir,
                &format!("/{}", "d".repeat(74))
            )
            .0
        );
    }

    #[pg_test]
    fn the_secret_file_hook_wants_an_absolute_path_or_nothing() {
        assert!(run_hook(crate::gucs::check_secret_file, "").0);
        assert!(run_hook(crate::gucs::check_secret_file, "/etc/ic_proxy.secret").0);
        assert!(!run_hook(crate::gucs::check_secret_file, "ic_proxy.secret").0);
    }

    fn fill(rows: &str) {
        Spi::run("DELETE FROM gp_segment_configuration").unwrap();
        Spi::run(&format!("INSERT INTO gp_segment_configuration (dbid, content, port, hostname, address) VALUES {rows}")).unwrap();
    }

    #[pg_test]
    fn generate_maps_every_instance_ordered_by_dbid() {
        fill("(3, 1, 6002, 'sdw2', 'sdw2'), (1, -1, 5432, 'cdw', 'cdw'), (2, 0, 6000, 'sdw1', '10.0.0.2')");
        assert_eq!(
            Spi::get_one::<String>("SELECT ic_proxy_addresses_generate(-1000)"),
            Ok(Some(
                "1:-1:cdw:4432,2:0:10.0.0.2:5000,3:1:sdw2:5002".to_string()
            ))
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT string_agg(dbid || '@' || port, ',' ORDER BY dbid) FROM ic_proxy_addresses_preview(10)"),
            Ok(Some("1@5442,2@6010,3@6012".to_string()))
        );
    }

    #[pg_test(error = "proxy port 70000 of dbid 1 (port 5432 + delta 64568) is outside 1..65535")]
    fn generate_refuses_a_port_out_of_range() {
        fill("(1, -1, 5432, 'cdw', 'cdw')");
        let _ = Spi::get_one::<String>("SELECT ic_proxy_addresses_generate(64568)");
    }

    #[pg_test(error = "gp_segment_configuration is empty: there is no instance to map")]
    fn generate_refuses_an_empty_configuration() {
        Spi::run("DELETE FROM gp_segment_configuration").unwrap();
        let _ = Spi::get_one::<String>("SELECT ic_proxy_addresses_generate(0)");
    }

    #[pg_test]
    fn check_lists_every_problem_and_nothing_for_a_valid_map() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM ic_proxy_addresses_check('1:-1:cdw:7000, 2:0:sdw1:7002')",
        );
        assert_eq!(n, Ok(Some(0)));
        let rows = Spi::get_one::<String>(
            "SELECT string_agg(position || ':' || problem, ' | ' ORDER BY position) \
               FROM ic_proxy_addresses_check('1:-1:cdw:0,2:x:sdw1:7002')",
        );
        assert_eq!(
            rows,
            Ok(Some("1:entry 1 \"1:-1:cdw:0\": port 0 is outside 1..65535 | 2:entry 2 \"2:x:sdw1:7002\": content \"x\" is not a number".to_string()))
        );
    }

    #[pg_test]
    fn with_no_map_and_no_dbid_the_proxy_reports_itself_off() {
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM ic_proxy_addresses()"),
            Ok(Some(0))
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM ic_proxy_status()"),
            Ok(Some(0))
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM ic_proxy_ping()"),
            Ok(Some(0))
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT running FROM ic_proxy_info()"),
            Ok(Some(false))
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT peer_listener_detail FROM ic_proxy_info()"),
            Ok(Some(
                "the proxy is off: ic_proxy.dbid is not set".to_string()
            ))
        );
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
