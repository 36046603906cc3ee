//! Every `ic_proxy.*` setting: private statics, one `init()`, a typed accessor
//! each. String settings are validated by check hooks that run the core's
//! parsers, so a bad value is refused when it is set (or when a reload reads
//! it) and the value in force stays in force. Only the main thread of a
//! backend or of the worker may call these accessors.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

use ic_proxy_core::address_map::AddressMap;
use ic_proxy_core::flow::{FlowParams, FlowParamsError};
use ic_proxy_core::protocol::{self, Dialect};
use ic_proxy_core::tls::{TlsFiles, TlsMode, TlsVerify};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use pgrx::pg_sys;

/// The address map, `dbid:content:host:port,...`: one entry per instance.
static ADDRESSES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// This instance's dbid; 0 means "not configured", and the proxy stays idle.
static DBID: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Where the backend socket is created.
static SOCKET_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"/tmp"));
/// The wire dialect every proxy and backend of the cluster speaks.
static DIALECT: GucSetting<DialectSetting> = GucSetting::<DialectSetting>::new(DialectSetting::C);
/// The largest DATA payload (the cluster's gp_max_packet_size).
static MAX_PACKET_SIZE: GucSetting<i32> =
    GucSetting::<i32>::new(protocol::DEFAULT_PACKET_SIZE as i32);
/// Threads of the proxy runtime.
static WORKER_THREADS: GucSetting<i32> = GucSetting::<i32>::new(2);
/// Byte cap of the cache for packets that arrive before their receiver, in kB.
static EARLY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// DATA that logical connections may queue for one peer, in kB.
static PEER_QUEUE_SIZE: GucSetting<i32> =
    GucSetting::<i32>::new((ic_proxy_core::config::DEFAULT_PEER_QUEUE_BYTES / 1024) as i32);
/// How long an early packet waits for its receiver, in seconds.
static EARLY_PACKET_TTL: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Unacknowledged DATA packets at which a sender is paused.
static FLOW_PAUSE: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Unacknowledged DATA packets at which a paused sender resumes.
static FLOW_RESUME: GucSetting<i32> = GucSetting::<i32>::new(30);
/// DATA packets delivered per DATA_ACK sent back.
static FLOW_ACK_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);
/// Time between attempts to dial a peer, in milliseconds.
static PEER_RETRY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// File holding the shared secret of peer authentication; empty: off.
static PEER_AUTH_SECRET_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));
/// TLS on peer links: off, on (opportunistic) or require.
static TLS: GucSetting<TlsSetting> = GucSetting::<TlsSetting>::new(TlsSetting::Off);
/// This proxy's certificate (PEM, with its chain), its key, and the CA.
static TLS_CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static TLS_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
static TLS_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
/// What a peer's certificate must pass: the CA and its name, or the CA.
static TLS_VERIFY: GucSetting<TlsVerifySetting> =
    GucSetting::<TlsVerifySetting>::new(TlsVerifySetting::Full);
/// Map entries the status area in shared memory holds; the rest are counted.
static MAX_STATUS_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_STATUS_ENTRIES);
/// How much the proxy logs.
static LOG_VERBOSITY: GucSetting<LogVerbosity> =
    GucSetting::<LogVerbosity>::new(LogVerbosity::Terse);

/// Default of `ic_proxy.max_status_entries`.
pub const DEFAULT_STATUS_ENTRIES: i32 = 4096;
/// Bounds of `ic_proxy.max_status_entries`: every dbid a map can hold fits
/// under the maximum (about 270 bytes each, 17 MB for all).
pub const MIN_STATUS_ENTRIES: i32 = 16;
pub const MAX_STATUS_ENTRIES_LIMIT: i32 = 65535;

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum DialectSetting {
    #[name = c"c"]
    C,
    #[name = c"b"]
    B,
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlsSetting {
    #[name = c"off"]
    Off,
    #[name = c"on"]
    On,
    #[name = c"require"]
    Require,
}

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlsVerifySetting {
    #[name = c"full"]
    Full,
    #[name = c"ca"]
    Ca,
}

/// The levels of Cloudberry's gp_log_interconnect that concern the proxy.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub enum LogVerbosity {
    #[name = c"terse"]
    Terse,
    #[name = c"verbose"]
    Verbose,
    #[name = c"debug"]
    Debug,
}

pub fn init() {
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"ic_proxy.addresses",
            c"Interconnect proxy address map: dbid:content:host:port, one entry per instance.",
            c"The syntax of Cloudberry's gp_interconnect_proxy_addresses, plus bracketed IPv6 \
              literals. Every instance needs the same map. Generate it with \
              ic_proxy_addresses_generate(delta).",
            &ADDRESSES,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_addresses),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ic_proxy.socket_dir",
            c"Directory of the Unix socket backends use to reach the proxy.",
            c"The socket is <dir>/.s.PGSQL.ic_proxy.<port>.<postmaster pid>, as Cloudberry's \
              backends expect in /tmp.",
            &SOCKET_DIR,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_socket_dir),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"ic_proxy.peer_auth_secret_file",
            c"File with the secret peers prove they share (HMAC-SHA256 challenge-response); empty: off.",
            c"Every instance needs the same secret; C proxies cannot authenticate, so leave it empty \
              in a cluster that mixes them. Read at start and on every reload.",
            &PEER_AUTH_SECRET_FILE,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
            Some(check_secret_file),
            None,
            None,
        );
        type Hook = unsafe extern "C-unwind" fn(
            *mut *mut c_char,
            *mut *mut c_void,
            pg_sys::GucSource::Type,
        ) -> bool;
        let files: [(&CStr, &CStr, &'static GucSetting<Option<CString>>, Hook); 3] = [
            (
                c"ic_proxy.tls_cert_file",
                c"This proxy's TLS certificate (PEM, leaf first, then any intermediates).",
                &TLS_CERT_FILE,
                check_tls_cert_file,
            ),
            (
                c"ic_proxy.tls_key_file",
                c"The private key of ic_proxy.tls_cert_file (PEM: PKCS#8, PKCS#1 or SEC1).",
                &TLS_KEY_FILE,
                check_tls_key_file,
            ),
            (
                c"ic_proxy.tls_ca_file",
                c"The CA certificate(s) that sign every proxy's certificate (PEM).",
                &TLS_CA_FILE,
                check_tls_ca_file,
            ),
        ];
        for (name, short, setting, hook) in files {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                c"Absolute path, read at start and on every reload: new links use the new files, \
                  links in use carry on unless the new CA no longer validates them.",
                setting,
                GucContext::Sighup,
                GucFlags::SUPERUSER_ONLY,
                Some(hook),
                None,
                None,
            );
        }
    }
    GucRegistry::define_enum_guc(
        c"ic_proxy.tls",
        c"TLS 1.3 on links between proxies: off, on (offered, plaintext with peers without it) or require.",
        c"off links with C proxies; on protects links between proxies that both have TLS, and \
          cannot stop an attacker on the path from removing the offer; require refuses every \
          plaintext link. Needs ic_proxy.tls_cert_file, ic_proxy.tls_key_file and ic_proxy.tls_ca_file.",
        &TLS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"ic_proxy.tls_verify",
        c"What a peer's certificate must pass: full (the CA, and a name matching its map entry's host) or ca.",
        c"full checks the certificate's subject alternative names (DNS or IP) against the host in \
          ic_proxy.addresses.",
        &TLS_VERIFY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.dbid",
        c"This instance's dbid in the address map (0: not configured, the proxy stays idle).",
        c"Its content id comes from its entry in ic_proxy.addresses.",
        &DBID,
        0,
        32767,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"ic_proxy.dialect",
        c"Wire dialect: c (36-byte header with magic, current Cloudberry) or b (32-byte header).",
        c"Every proxy and backend of a cluster must speak the same dialect.",
        &DIALECT,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.max_packet_size",
        c"Largest DATA payload in bytes; set it to the cluster's gp_max_packet_size.",
        c"",
        &MAX_PACKET_SIZE,
        protocol::MIN_PACKET_SIZE as i32,
        protocol::MAX_PACKET_SIZE_LIMIT as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.worker_threads",
        c"Threads of the proxy runtime.",
        c"",
        &WORKER_THREADS,
        1,
        64,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.early_packet_cache_size",
        c"Memory cap for packets that arrive before their receiver.",
        c"Over the cap the oldest waiting logical connection is dropped and counted.",
        &EARLY_CACHE_SIZE,
        1024,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.peer_queue_size",
        c"Memory cap for DATA waiting to be sent to one peer.",
        c"All logical connections to a peer share it; past it their backends wait (flow control), nothing is dropped.",
        &PEER_QUEUE_SIZE,
        64,
        4 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.early_packet_ttl",
        c"How long a packet waits for its receiver before it is dropped.",
        c"",
        &EARLY_PACKET_TTL,
        1,
        86400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    unsafe {
        GucRegistry::define_int_guc_with_hooks(
            c"ic_proxy.flow_pause_threshold",
            c"Unacknowledged DATA packets at which a sender is paused (C proxy: 100).",
            c"Must be above ic_proxy.flow_resume_threshold.",
            &FLOW_PAUSE,
            2,
            100_000,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_flow_pause),
            None,
            None,
        );
        GucRegistry::define_int_guc_with_hooks(
            c"ic_proxy.flow_resume_threshold",
            c"Unacknowledged DATA packets at which a paused sender resumes (C proxy: 30).",
            c"Must be below ic_proxy.flow_pause_threshold and at least ic_proxy.flow_ack_interval - 1.",
            &FLOW_RESUME,
            0,
            99_999,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_flow_resume),
            None,
            None,
        );
        GucRegistry::define_int_guc_with_hooks(
            c"ic_proxy.flow_ack_interval",
            c"DATA packets delivered per DATA_ACK sent back (C proxy: 10).",
            c"Must not exceed ic_proxy.flow_resume_threshold + 1, or a paused sender may never resume.",
            &FLOW_ACK_INTERVAL,
            1,
            10_000,
            GucContext::Postmaster,
            GucFlags::default(),
            Some(check_flow_ack_interval),
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"ic_proxy.max_status_entries",
        c"Map entries ic_proxy_status() can show: the size of the status area in shared memory.",
        c"Entries beyond it are counted in ic_proxy_info().status_entries_missing. About 270 bytes each.",
        &MAX_STATUS_ENTRIES,
        MIN_STATUS_ENTRIES,
        MAX_STATUS_ENTRIES_LIMIT,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ic_proxy.peer_retry_interval",
        c"Time between attempts to dial a peer proxy.",
        c"",
        &PEER_RETRY_INTERVAL,
        100,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"ic_proxy.log_verbosity",
        c"How much the proxy logs: terse, verbose or debug (like gp_log_interconnect).",
        c"",
        &LOG_VERBOSITY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    unsafe { pg_sys::MarkGUCPrefixReserved(c"ic_proxy".as_ptr()) };
}

// ---- typed accessors -------------------------------------------------------

/// The map in force. The check hook has validated it, so parsing succeeds; an
/// impossible failure yields the empty map rather than a panic.
pub fn addresses() -> AddressMap {
    AddressMap::parse(&addresses_text()).unwrap_or_default()
}

pub fn addresses_text() -> String {
    string_value(&ADDRESSES)
}

pub fn dbid() -> Option<u16> {
    u16::try_from(DBID.get()).ok().filter(|d| *d != 0)
}

pub fn socket_dir() -> PathBuf {
    PathBuf::from(string_value(&SOCKET_DIR))
}

pub fn dialect() -> Dialect {
    match DIALECT.get() {
        DialectSetting::C => Dialect::C,
        DialectSetting::B => Dialect::B,
    }
}

pub fn max_packet_size() -> usize {
    MAX_PACKET_SIZE.get() as usize
}

pub fn worker_threads() -> usize {
    WORKER_THREADS.get() as usize
}

pub fn early_cache_bytes() -> usize {
    EARLY_CACHE_SIZE.get() as usize * 1024
}

pub fn peer_queue_bytes() -> usize {
    PEER_QUEUE_SIZE.get() as usize * 1024
}

pub fn early_packet_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(EARLY_PACKET_TTL.get() as u64)
}

/// (pause, resume, ack interval) as configured.
pub fn flow_thresholds() -> (u32, u32, u32) {
    (
        FLOW_PAUSE.get() as u32,
        FLOW_RESUME.get() as u32,
        FLOW_ACK_INTERVAL.get() as u32,
    )
}

/// The flow-control settings as the core takes them.
pub fn flow_params() -> FlowParams {
    let (pause_at, resume_at, ack_interval) = flow_thresholds();
    FlowParams {
        pause_at,
        resume_at,
        ack_interval,
    }
}

/// The size of the status area; fixed at server start.
pub fn max_status_entries() -> usize {
    MAX_STATUS_ENTRIES.get() as usize
}

pub fn peer_retry_interval() -> std::time::Duration {
    std::time::Duration::from_millis(PEER_RETRY_INTERVAL.get() as u64)
}

/// The peer-authentication secret file, if one is set.
pub fn peer_auth_secret_file() -> Option<PathBuf> {
    Some(string_value(&PEER_AUTH_SECRET_FILE))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

pub fn tls_mode() -> TlsMode {
    match TLS.get() {
        TlsSetting::Off => TlsMode::Off,
        TlsSetting::On => TlsMode::On,
        TlsSetting::Require => TlsMode::Require,
    }
}

pub fn tls_verify() -> TlsVerify {
    match TLS_VERIFY.get() {
        TlsVerifySetting::Full => TlsVerify::Full,
        TlsVerifySetting::Ca => TlsVerify::Ca,
    }
}

/// The three TLS files, when all are set.
pub fn tls_files() -> Option<TlsFiles> {
    let [cert, key, ca] =
        [&TLS_CERT_FILE, &TLS_KEY_FILE, &TLS_CA_FILE].map(|s| PathBuf::from(string_value(s)));
    if cert.as_os_str().is_empty() || key.as_os_str().is_empty() || ca.as_os_str().is_empty() {
        return None;
    }
    Some(TlsFiles { cert, key, ca })
}

pub fn log_verbosity() -> LogVerbosity {
    LOG_VERBOSITY.get()
}

fn string_value(s: &GucSetting<Option<CString>>) -> String {
    s.get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---- check hooks -----------------------------------------------------------

/// Hands a message to PostgreSQL's GUC error reporting. The strings are
/// palloc'd, as guc.c expects; this never raises an error itself.
unsafe fn report(message: &str, detail: Option<&str>, hint: Option<&str>) {
    unsafe {
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
        pg_sys::GUC_check_errmsg_string = palloc_str(message);
        if let Some(d) = detail {
            pg_sys::GUC_check_errdetail_string = palloc_str(d);
        }
        if let Some(h) = hint {
            pg_sys::GUC_check_errhint_string = palloc_str(h);
        }
    }
}

unsafe fn palloc_str(s: &str) -> *mut c_char {
    // Interior NULs cannot come from a GUC value; replace them to stay total.
    let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

unsafe fn hook_value<'a>(newval: *mut *mut c_char) -> Option<&'a str> {
    unsafe {
        if newval.is_null() || (*newval).is_null() {
            return None;
        }
        CStr::from_ptr(*newval).to_str().ok()
    }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_addresses(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let Some(value) = (unsafe { hook_value(newval) }) else {
        // NULL means "no map": the same as the empty string.
        return true;
    };
    match AddressMap::parse(value) {
        Ok(_) => true,
        Err(e) => {
            let message = format!("invalid ic_proxy.addresses: {e}");
            let detail = e.detail();
            unsafe { report(&message, detail.as_deref(), Some(&e.hint())) };
            false
        }
    }
}

/// Room for "/.s.PGSQL.ic_proxy.65535.4194304" and the NUL inside sun_path.
const SOCKET_NAME_ROOM: usize = 33;
const SUN_PATH_LEN: usize = 108;

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_socket_dir(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let value = unsafe { hook_value(newval) }.unwrap_or("");
    if !value.starts_with('/') {
        unsafe {
            report(
                &format!("invalid ic_proxy.socket_dir: \"{value}\" is not an absolute path"),
                None,
                Some("Use an absolute directory such as /tmp, where Cloudberry's backends look."),
            )
        };
        return false;
    }
    if value.len() + SOCKET_NAME_ROOM > SUN_PATH_LEN {
        unsafe {
            report(
                &format!(
                    "invalid ic_proxy.socket_dir: \"{value}\" is {} bytes, too long for a Unix socket path",
                    value.len()
                ),
                Some(&format!(
                    "A socket path holds at most {} bytes, and the socket's own name takes {} of them.",
                    SUN_PATH_LEN - 1,
                    SOCKET_NAME_ROOM - 1
                )),
                Some(&format!(
                    "Choose a directory of at most {} bytes.",
                    SUN_PATH_LEN - SOCKET_NAME_ROOM
                )),
            )
        };
        return false;
    }
    true
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_secret_file(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let value = unsafe { hook_value(newval) }.unwrap_or("");
    if value.is_empty() || value.starts_with('/') {
        return true;
    }
    unsafe {
        report(
            &format!("invalid ic_proxy.peer_auth_secret_file: \"{value}\" is not an absolute path"),
            None,
            Some("Give the absolute path of a file readable only by the server's user, or '' to turn peer authentication off."),
        )
    };
    false
}

/// A TLS file setting: empty, or an absolute path.
unsafe fn check_tls_path(name: &str, newval: *mut *mut c_char) -> bool {
    let value = unsafe { hook_value(newval) }.unwrap_or("");
    if value.is_empty() || value.starts_with('/') {
        return true;
    }
    unsafe {
        report(
            &format!("invalid {name}: \"{value}\" is not an absolute path"),
            None,
            Some("Give the absolute path of a PEM file readable by the server's user (a key: only by it), or '' while ic_proxy.tls is off."),
        )
    };
    false
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_tls_cert_file(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { check_tls_path("ic_proxy.tls_cert_file", newval) }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_tls_key_file(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { check_tls_path("ic_proxy.tls_key_file", newval) }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_tls_ca_file(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { check_tls_path("ic_proxy.tls_ca_file", newval) }
}

// ---- flow control: three settings that only work together ---------------------

/// Why a (pause, resume, ack interval) triple cannot work, in the words of
/// the settings: message, detail and hint.
pub struct FlowProblem {
    pub message: String,
    pub detail: String,
    pub hint: String,
}

impl std::fmt::Display for FlowProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.hint)
    }
}

/// None when the core accepts `p`; otherwise what is wrong and the fix.
pub fn flow_problem(p: &FlowParams) -> Option<FlowProblem> {
    Some(match p.validate().err()? {
        FlowParamsError::ResumeNotBelowPause {
            resume_at,
            pause_at,
        } => FlowProblem {
            message: format!(
                "ic_proxy.flow_resume_threshold ({resume_at}) must be below ic_proxy.flow_pause_threshold ({pause_at})"
            ),
            detail: "A sender pauses at the pause threshold of unacknowledged DATA packets and resumes at the resume threshold, so the resume threshold must be the lower one.".into(),
            hint: format!(
                "Set ic_proxy.flow_resume_threshold below {pause_at} or ic_proxy.flow_pause_threshold above {resume_at} (C proxy: 100 and 30), then restart the server."
            ),
        },
        FlowParamsError::AckIntervalAboveResume {
            ack_interval,
            resume_at,
        } => FlowProblem {
            message: format!(
                "ic_proxy.flow_ack_interval ({ack_interval}) must not exceed ic_proxy.flow_resume_threshold + 1 ({})",
                resume_at + 1
            ),
            detail: "After the receiver has acknowledged all it can, up to ic_proxy.flow_ack_interval - 1 packets stay unacknowledged; above ic_proxy.flow_resume_threshold a paused sender never resumes.".into(),
            hint: format!(
                "Set ic_proxy.flow_ack_interval to at most {} or ic_proxy.flow_resume_threshold to at least {} (C proxy: 10 and 30), then restart the server.",
                resume_at + 1,
                ack_interval - 1
            ),
        },
        other => FlowProblem {
            message: format!("invalid flow-control settings: {other}"),
            detail: String::new(),
            hint: "Check ic_proxy.flow_pause_threshold, ic_proxy.flow_resume_threshold and ic_proxy.flow_ack_interval (C proxy: 100, 30, 10), then restart the server.".into(),
        },
    })
}

/// Which of the three settings a check hook validates.
#[derive(Clone, Copy)]
enum FlowSetting {
    Pause,
    Resume,
    AckInterval,
}

impl FlowSetting {
    fn name(self) -> &'static str {
        match self {
            FlowSetting::Pause => "ic_proxy.flow_pause_threshold",
            FlowSetting::Resume => "ic_proxy.flow_resume_threshold",
            FlowSetting::AckInterval => "ic_proxy.flow_ack_interval",
        }
    }
}

/// The value `name` will have at the next server start: its last
/// assignment in postgresql.conf (with its includes) and then
/// postgresql.auto.conf, or the value in force when no file sets it. These
/// settings only change at a restart, so this, not the value in force, is
/// what a new value must agree with: raising both thresholds with two
/// ALTER SYSTEM commands works.
unsafe fn value_at_next_start(name: &str, in_force: i32) -> i32 {
    unsafe {
        let mut head: *mut pg_sys::ConfigVariable = std::ptr::null_mut();
        let mut tail: *mut pg_sys::ConfigVariable = std::ptr::null_mut();
        // Errors in the files are reported (at DEBUG2) and parsing stops;
        // the server reports them itself at its next reload or start.
        if !pg_sys::ConfigFileName.is_null() {
            pg_sys::ParseConfigFile(
                pg_sys::ConfigFileName,
                true,
                std::ptr::null(),
                0,
                0,
                pg_sys::DEBUG2 as i32,
                &mut head,
                &mut tail,
            );
        }
        if !pg_sys::DataDir.is_null() {
            pg_sys::ParseConfigFile(
                c"postgresql.auto.conf".as_ptr(),
                false,
                std::ptr::null(),
                0,
                0,
                pg_sys::DEBUG2 as i32,
                &mut head,
                &mut tail,
            );
        }
        let mut value = in_force;
        let mut item = head;
        while !item.is_null() {
            let v = &*item;
            if !v.name.is_null()
                && !v.value.is_null()
                && CStr::from_ptr(v.name)
                    .to_str()
                    .is_ok_and(|n| n.eq_ignore_ascii_case(name))
            {
                if let Some(parsed) = CStr::from_ptr(v.value)
                    .to_str()
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    value = parsed;
                }
            }
            item = v.next;
        }
        pg_sys::FreeConfigVariables(head);
        value
    }
}

/// The check hooks of the three flow settings. At server start the
/// postmaster applies them one by one, in an order of its own, and an error
/// there stops the server, so only a session checks the triple (ALTER
/// SYSTEM); a bad triple in postgresql.conf reaches the worker, which stays
/// off and says why.
unsafe fn check_flow(which: FlowSetting, newval: i32) -> bool {
    unsafe {
        if !pg_sys::IsUnderPostmaster || !pg_sys::IsTransactionState() {
            return true;
        }
        let at_next_start =
            |s: FlowSetting, in_force: i32| -> i32 { value_at_next_start(s.name(), in_force) };
        let mut p = FlowParams {
            pause_at: at_next_start(FlowSetting::Pause, FLOW_PAUSE.get()).max(0) as u32,
            resume_at: at_next_start(FlowSetting::Resume, FLOW_RESUME.get()).max(0) as u32,
            ack_interval: at_next_start(FlowSetting::AckInterval, FLOW_ACK_INTERVAL.get()).max(0)
                as u32,
        };
        let v = newval.max(0) as u32;
        match which {
            FlowSetting::Pause => p.pause_at = v,
            FlowSetting::Resume => p.resume_at = v,
            FlowSetting::AckInterval => p.ack_interval = v,
        }
        match flow_problem(&p) {
            None => true,
            Some(problem) => {
                report(
                    &problem.message,
                    Some(&problem.detail)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.as_str()),
                    Some(&problem.hint),
                );
                false
            }
        }
    }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_flow_pause(
    newval: *mut i32,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { newval.is_null() || check_flow(FlowSetting::Pause, *newval) }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_flow_resume(
    newval: *mut i32,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { newval.is_null() || check_flow(FlowSetting::Resume, *newval) }
}

#[pgrx::pg_guard]
pub(crate) unsafe extern "C-unwind" fn check_flow_ack_interval(
    newval: *mut i32,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe { newval.is_null() || check_flow(FlowSetting::AckInterval, *newval) }
}
