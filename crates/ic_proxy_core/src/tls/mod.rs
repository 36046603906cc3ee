//! TLS 1.3 on peer links (rustls with the `ring` provider): the settings,
//! the certificates and keys loaded from their files, the client and server
//! configurations built from them, and the stream a link runs on.
//!
//! Both ends present a certificate signed by the CA of `ic_proxy.tls_ca_file`;
//! each proxy is a TLS client when it dials and a server when it accepts, so
//! its certificate needs both the `serverAuth` and the `clientAuth` extended
//! key usage (or none). With `ic_proxy.tls_verify = full` (the default) the
//! certificate's subject alternative name (DNS name or IP address) must also
//! match the host of the peer's entry in the address map; `ca` checks the
//! CA only. How TLS is agreed without a C proxy ever seeing it is in
//! [`negotiate`].

pub mod cert_info;
pub mod negotiate;
mod stream;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::Digest;

pub use cert_info::CertInfo;
pub use stream::{LinkStream, ReadHalf, WriteHalf};

/// `ic_proxy.tls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext, as Cloudberry's own proxies (the default; C proxies can
    /// join).
    #[default]
    Off,
    /// Offer TLS when dialing and accept it; link in plaintext with a peer
    /// that does not speak it (opportunistic: an attacker on the path can
    /// strip the offer).
    On,
    /// TLS only: a peer that does not speak it is refused, on both ends.
    Require,
}

impl TlsMode {
    pub const NAMES: [&'static str; 3] = ["off", "on", "require"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn parse(s: &str) -> Option<TlsMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" | "0" => Some(TlsMode::Off),
            "on" | "true" | "yes" | "1" => Some(TlsMode::On),
            "require" | "required" => Some(TlsMode::Require),
            _ => None,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `ic_proxy.tls_verify`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVerify {
    /// The CA, and the peer's name: its certificate's subject alternative
    /// name must match the host of its map entry.
    #[default]
    Full,
    /// The CA only.
    Ca,
}

impl TlsVerify {
    pub fn name(self) -> &'static str {
        match self {
            TlsVerify::Full => "full",
            TlsVerify::Ca => "ca",
        }
    }

    pub fn parse(s: &str) -> Option<TlsVerify> {
        match s.trim().to_ascii_lowercase().as_str() {
            "full" => Some(TlsVerify::Full),
            "ca" => Some(TlsVerify::Ca),
            _ => None,
        }
    }
}

/// The three files TLS needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Why TLS cannot be used with the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {0} needs a certificate, its key and the CA (ic_proxy.tls_cert_file, ic_proxy.tls_key_file, ic_proxy.tls_ca_file; ic-proxy run: --tls-cert-file, --tls-key-file, --tls-ca-file)")]
    MissingFiles(TlsMode),
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: {error}", path.display())]
    Pem {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("the CA certificate in {} cannot be used: {error}", path.display())]
    BadCa { path: PathBuf, error: rustls::Error },
    #[error("the certificate and key cannot be used together: {0}")]
    BadPair(rustls::Error),
    #[error("the certificate in {} {} (CA {})", cert.display(), problem(error), ca.display())]
    OwnCertificate {
        cert: PathBuf,
        ca: PathBuf,
        error: rustls::Error,
    },
    #[error("{0}")]
    Config(rustls::Error),
}

/// TLS as a runtime uses it: the mode, how peers are verified, and the
/// loaded material (None while the mode is off).
#[derive(Clone, Debug, Default)]
pub struct TlsPolicy {
    pub mode: TlsMode,
    pub verify: TlsVerify,
    pub material: Option<Arc<TlsMaterial>>,
}

impl PartialEq for TlsPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.verify == other.verify
            && self.material.as_ref().map(|m| m.fingerprint)
                == other.material.as_ref().map(|m| m.fingerprint)
    }
}

impl Eq for TlsPolicy {}

impl TlsPolicy {
    /// Plaintext, the default.
    pub fn off() -> TlsPolicy {
        TlsPolicy::default()
    }

    /// Loads `files` for `mode` (nothing is loaded for `off`).
    pub fn load(
        mode: TlsMode,
        verify: TlsVerify,
        files: Option<&TlsFiles>,
    ) -> Result<TlsPolicy, TlsError> {
        let material = match (mode, files) {
            (TlsMode::Off, _) => None,
            (_, None) => return Err(TlsError::MissingFiles(mode)),
            (_, Some(files)) => Some(Arc::new(TlsMaterial::load(files, verify, true)?)),
        };
        Ok(TlsPolicy {
            mode,
            verify,
            material,
        })
    }

    /// As [`TlsPolicy::load`], without checking this proxy's own
    /// certificate against its CA and dates: what a proxy presents once its
    /// certificate expired while it ran. For tests of what peers do then.
    #[doc(hidden)]
    pub fn load_unchecked(
        mode: TlsMode,
        verify: TlsVerify,
        files: &TlsFiles,
    ) -> Result<TlsPolicy, TlsError> {
        Ok(TlsPolicy {
            mode,
            verify,
            material: Some(Arc::new(TlsMaterial::load(files, verify, false)?)),
        })
    }

    /// True when TLS can be offered and accepted.
    pub fn ready(&self) -> bool {
        self.mode != TlsMode::Off && self.material.is_some()
    }
}

/// Certificates, key and CA, loaded and checked, and the configurations
/// built from them.
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verify: TlsVerify,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The dialing side's configuration (the same for every link).
    client: Arc<ClientConfig>,
    /// Of the three files' contents: equal material, equal fingerprint.
    fingerprint: [u8; 32],
    /// This proxy's certificate, as `ic_proxy_info()` shows it.
    pub identity: CertInfo,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

impl TlsMaterial {
    /// Loads and checks the files; with `check_own`, this proxy's own
    /// certificate must pass what its peers will check of it.
    pub fn load(
        files: &TlsFiles,
        verify: TlsVerify,
        check_own: bool,
    ) -> Result<TlsMaterial, TlsError> {
        let (cert_pem, key_pem, ca_pem) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let pem = |path: &Path| {
            let path = path.to_path_buf();
            move |error| TlsError::Pem { path, error }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(pem(&files.cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: files.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: files.key.clone(),
            },
            error => TlsError::Pem {
                path: files.key.clone(),
                error,
            },
        })?;
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<_, _>>()
            .map_err(pem(&files.ca))?;
        if cas.is_empty() {
            return Err(TlsError::NoCertificate {
                path: files.ca.clone(),
            });
        }
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|error| TlsError::BadCa {
                path: files.ca.clone(),
                error,
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = CertInfo::parse(&chain[0]).unwrap_or_default();
        let mut digest = sha2::Sha256::new();
        for part in [&cert_pem, &key_pem, &ca_pem] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        let fingerprint: [u8; 32] = digest.finalize().into();
        let roots = Arc::new(roots);
        // The dialing side's configuration is the same for every link: made
        // once here.
        let client = client_config(&roots, &provider, verify, &chain, &key)?;
        let material = TlsMaterial {
            roots,
            chain,
            key,
            verify,
            provider,
            client,
            fingerprint,
            identity,
        };
        // Our own certificate must pass what peers will check of it (the CA,
        // the validity dates), and go with the key.
        if check_own {
            material
                .check_chain(&material.chain)
                .map_err(|error| TlsError::OwnCertificate {
                    cert: files.cert.clone(),
                    ca: files.ca.clone(),
                    error,
                })?;
        }
        material.server_config(None)?;
        Ok(material)
    }

    /// Checks a peer's (or our own) chain against the CA now: signed by it,
    /// within its validity dates.
    pub fn check_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let Some((end, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )
    }

    /// Checks that a certificate names `host` (a DNS name or an IP address).
    pub fn check_name(end: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            rustls::Error::General(format!("{host:?} is not a DNS name or an IP address"))
        })?;
        let parsed = rustls::server::ParsedCertificate::try_from(end)?;
        rustls::client::verify_server_name(&parsed, &name)
    }

    /// The configuration of the accepting side for one connection whose
    /// PEER_HELLO claims an instance at `peer_host` (None: no name check).
    pub fn server_config(&self, peer_host: Option<&str>) -> Result<Arc<ServerConfig>, TlsError> {
        let expect = match self.verify {
            TlsVerify::Full => peer_host.map(str::to_string),
            TlsVerify::Ca => None,
        };
        let verifier =
            verify::PeerClientVerifier::new(self.roots.clone(), self.provider.clone(), expect)
                .map_err(TlsError::Config)?;
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::BadPair)?;
        Ok(Arc::new(config))
    }

    /// The configuration of the dialing side.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// How long until this proxy's certificate expires (zero once it has).
    pub fn expires_in(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Duration::from_secs(self.identity.not_after.saturating_sub(now))
    }
}

/// The configuration of the dialing side: its chain and key, and the
/// acceptor's certificate checked as `verify` says.
fn client_config(
    roots: &Arc<RootCertStore>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    verify: TlsVerify,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = verify::PeerServerVerifier::new(roots.clone(), provider.clone(), verify)
        .map_err(TlsError::Config)?;
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain.to_vec(), key.clone_key())
        .map_err(TlsError::BadPair)?;
    Ok(Arc::new(config))
}

/// A certificate expiring within this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

impl TlsMaterial {
    /// The WARNING to log when this proxy's certificate expires within
    /// [`EXPIRY_WARNING`] (or has expired); None otherwise.
    pub fn expiry_warning(&self) -> Option<String> {
        let left = self.expires_in();
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "ic-proxy: the TLS certificate {} expires {} ({} days from now): replace ic_proxy.tls_cert_file and reload",
                self.identity.subject,
                cert_info::format_utc(self.identity.not_after),
                left.as_secs() / 86_400
            )
        })
    }
}

/// What is wrong with a certificate, as "the certificate ..." goes on.
fn problem(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => "is not signed by the CA (unknown CA)".into(),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "does not name the host of its map entry (name mismatch)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "has expired".into(),
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "is not valid yet".into()
        }
        other => format!("is refused: {other}"),
    }
}

/// Explains a TLS failure in the words the status shows: unknown CA, name
/// mismatch, expired, and what the other end said about ours.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::InvalidCertificate(_) => format!("the peer's certificate {}", problem(e)),
        E::AlertReceived(A::UnknownCA) => {
            "the peer does not know our CA (unknown CA at the peer)".into()
        }
        E::AlertReceived(A::CertificateExpired) => {
            "the peer says our certificate has expired".into()
        }
        E::AlertReceived(A::BadCertificate) => {
            "the peer refused our certificate (name mismatch or bad certificate at the peer)".into()
        }
        E::AlertReceived(A::ProtocolVersion) => "the peer does not speak TLS 1.3".into(),
        E::NoCertificatesPresented => "the peer presented no certificate".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A CA and a certificate for 127.0.0.1 valid until `not_after` (seconds
    /// since the epoch), written into `dir`.
    fn files(dir: &Path, not_after: u64) -> TlsFiles {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "ic-proxy soon");
        let (y, m, d) = ymd(not_after);
        leaf.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let f = TlsFiles {
            cert: dir.join("c.pem"),
            key: dir.join("c.key"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&f.cert, cert.pem()).unwrap();
        std::fs::write(&f.key, key.serialize_pem()).unwrap();
        std::fs::write(&f.ca, ca_cert.pem()).unwrap();
        f
    }

    fn ymd(secs: u64) -> (i32, u8, u8) {
        let s = cert_info::format_utc(secs);
        (
            s[..4].parse().unwrap(),
            s[5..7].parse().unwrap(),
            s[8..10].parse().unwrap(),
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_certificate_expiring_within_14_days_is_warned_about_and_a_later_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let soon = TlsMaterial::load(
            &files(dir.path(), now() + 10 * 86_400),
            TlsVerify::Full,
            true,
        )
        .expect("loads");
        let w = soon.expiry_warning().expect("a warning 10 days before");
        assert!(
            w.contains("CN=ic-proxy soon") && w.contains("days from now"),
            "{w}"
        );
        let later = TlsMaterial::load(
            &files(dir.path(), now() + 60 * 86_400),
            TlsVerify::Full,
            true,
        )
        .expect("loads");
        assert_eq!(later.expiry_warning(), None);
    }

    #[test]
    fn files_that_cannot_be_used_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let good = files(dir.path(), now() + 60 * 86_400);
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..good.clone()
        };
        let e = TlsPolicy::load(TlsMode::On, TlsVerify::Full, Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let not_pem = TlsFiles {
            key: good.cert.clone(),
            ..good.clone()
        };
        let e = TlsPolicy::load(TlsMode::On, TlsVerify::Full, Some(&not_pem)).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        let e = TlsPolicy::load(TlsMode::Require, TlsVerify::Full, None).unwrap_err();
        assert!(e.to_string().contains("--tls-cert-file"), "{e}");
        assert!(TlsPolicy::load(TlsMode::Off, TlsVerify::Full, None).is_ok());
        // The same files load to an equal policy (a reload that changes
        // nothing), other files to another.
        let a = TlsPolicy::load(TlsMode::On, TlsVerify::Full, Some(&good)).unwrap();
        let b = TlsPolicy::load(TlsMode::On, TlsVerify::Full, Some(&good)).unwrap();
        assert_eq!(a, b);
        let other = tempfile::tempdir().unwrap();
        let c = TlsPolicy::load(
            TlsMode::On,
            TlsVerify::Full,
            Some(&files(other.path(), now() + 60 * 86_400)),
        )
        .unwrap();
        assert_ne!(a, c);
    }
}
