//! SQL functions, one file per concern.
pub mod addresses;
