//! The address map from SQL: generate it from gp_segment_configuration (what
//! the seed document's PL/Python recipe does, with no untrusted language),
//! preview it, check a candidate, and show the map in force.

use ic_proxy_core::address_map::{AddressMap, PeerAddr};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::{errors, gucs};

/// One row of gp_segment_configuration, with the proxy port computed.
struct Instance {
    dbid: i16,
    content: i16,
    address: String,
    port: i32,
}

/// Reads every instance (coordinator, standby, primaries, mirrors) ordered by
/// dbid, with port + delta, and validates the result as an address map.
fn instances(delta: i32) -> Result<(Vec<Instance>, AddressMap), ErrorReport> {
    let rows = Spi::connect(|client| -> Result<Vec<Instance>, ErrorReport> {
        let relation = segment_configuration_relation(client)?;
        let query = format!(
            "SELECT dbid::int2, content::int2, address::text, port::int4 FROM {relation} ORDER BY dbid"
        );
        let table = client
            .select(&query, None, &[])
            .map_err(errors::spi_error)?;
        let mut out = Vec::new();
        for row in table {
            let dbid: i16 = row.get(1).map_err(errors::spi_error)?.unwrap_or(0);
            let content: i16 = row.get(2).map_err(errors::spi_error)?.unwrap_or(0);
            let address: Option<String> = row.get(3).map_err(errors::spi_error)?;
            let port: Option<i32> = row.get(4).map_err(errors::spi_error)?;
            let (Some(address), Some(port)) = (address.filter(|a| !a.is_empty()), port) else {
                return Err(errors::error(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("gp_segment_configuration row dbid {dbid} has no address or port"),
                    "Every instance needs its address and postmaster port in gp_segment_configuration.",
                ));
            };
            out.push(Instance {
                dbid,
                content,
                address,
                port,
            });
        }
        Ok(out)
    })?;
    if rows.is_empty() {
        return Err(errors::error(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            "gp_segment_configuration is empty: there is no instance to map".to_string(),
            "Insert one row per instance (dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir).",
        ));
    }
    let mut instances = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        let proxy_port = i64::from(r.port) + i64::from(delta);
        let port = u16::try_from(proxy_port).ok().filter(|p| *p != 0).ok_or_else(|| {
            errors::error(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "proxy port {proxy_port} of dbid {} (port {} + delta {delta}) is outside 1..65535",
                    r.dbid, r.port
                ),
                "Choose a delta that keeps every instance's port + delta within 1..65535.",
            )
        })?;
        let dbid = u16::try_from(r.dbid)
            .ok()
            .filter(|d| *d != 0)
            .ok_or_else(|| {
                errors::error(
                    PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                    format!(
                        "dbid {} in gp_segment_configuration is outside 1..32767",
                        r.dbid
                    ),
                    "Fix the dbid in gp_segment_configuration.",
                )
            })?;
        entries.push(PeerAddr {
            dbid,
            content: r.content,
            host: r.address.clone(),
            port,
        });
        instances.push(Instance {
            port: i32::from(port),
            ..r
        });
    }
    let map = AddressMap::from_entries(entries)
        .map_err(|e| errors::map_error("the generated address map is invalid", &e))?;
    Ok((instances, map))
}

/// `pg_catalog.gp_segment_configuration` on Cloudberry, the extension's own
/// compatible table elsewhere.
fn segment_configuration_relation(
    client: &pgrx::spi::SpiClient<'_>,
) -> Result<String, ErrorReport> {
    let name: Option<String> = client
        .select(
            "SELECT CASE WHEN to_regclass('pg_catalog.gp_segment_configuration') IS NOT NULL \
                     THEN 'pg_catalog.gp_segment_configuration' \
                     ELSE (SELECT quote_ident(n.nspname) || '.gp_segment_configuration' \
                             FROM pg_catalog.pg_extension e \
                             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
                            WHERE e.extname = 'cloudberry_ic_proxy') END",
            None,
            &[],
        )
        .and_then(|t| t.first().get_one::<String>())
        .map_err(errors::spi_error)?;
    name.ok_or_else(|| {
        errors::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "gp_segment_configuration does not exist".to_string(),
            "Run CREATE EXTENSION cloudberry_ic_proxy, which creates it on plain PostgreSQL.",
        )
    })
}

/// The address map for every instance in gp_segment_configuration, ordered by
/// dbid, with proxy port = port + delta: the value for `ic_proxy.addresses`
/// (or Cloudberry's `gp_interconnect_proxy_addresses`).
#[pg_extern(stable, parallel_safe)]
fn ic_proxy_addresses_generate(delta: i32) -> Result<String, ErrorReport> {
    let (_, map) = instances(delta)?;
    Ok(map.to_string())
}

/// What `ic_proxy_addresses_generate(delta)` would map, one row per instance.
#[pg_extern(stable, parallel_safe)]
fn ic_proxy_addresses_preview(
    delta: i32,
) -> Result<
    TableIterator<
        'static,
        (
            name!(dbid, i16),
            name!(content, i16),
            name!(address, String),
            name!(port, i32),
        ),
    >,
    ErrorReport,
> {
    let (rows, _) = instances(delta)?;
    Ok(TableIterator::new(
        rows.into_iter()
            .map(|r| (r.dbid, r.content, r.address, r.port)),
    ))
}

/// Every problem of a candidate map, one row each; no rows means it is valid.
#[pg_extern(immutable, parallel_safe)]
fn ic_proxy_addresses_check(
    map: &str,
) -> TableIterator<
    'static,
    (
        name!(position, i32),
        name!(entry, String),
        name!(problem, String),
    ),
> {
    let rows: Vec<_> = AddressMap::check(map)
        .into_iter()
        .map(|p| {
            let message = p.message();
            (p.position as i32, p.entry, message)
        })
        .collect();
    TableIterator::new(rows)
}

/// The map in force in this server, with the entry of this instance marked.
#[pg_extern(stable, parallel_safe)]
fn ic_proxy_addresses() -> TableIterator<
    'static,
    (
        name!(dbid, i16),
        name!(content, i16),
        name!(host, String),
        name!(port, i32),
        name!(is_self, bool),
    ),
> {
    let me = gucs::dbid();
    let rows: Vec<_> = gucs::addresses()
        .entries()
        .iter()
        .map(|e| {
            (
                e.dbid as i16,
                e.content,
                e.host.clone(),
                i32::from(e.port),
                Some(e.dbid) == me,
            )
        })
        .collect();
    TableIterator::new(rows)
}
