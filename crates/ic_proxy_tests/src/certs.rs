//! Certificates for the tests, made when they run (never committed): a CA
//! and, per instance, a certificate naming its host, with both the
//! `serverAuth` and `clientAuth` extended key usages, as
//! `ic_proxy.tls_cert_file` needs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ic_proxy_core::tls::{TlsFiles, TlsMode, TlsPolicy, TlsVerify};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA that writes its files into a directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// How an issued certificate differs from a good one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flaw {
    #[default]
    None,
    /// Expired a year ago.
    Expired,
}

impl TestCa {
    /// A new CA named `name`; its certificate is `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write CA");
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            key,
            cert,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate and key for `host` (an IP address or a DNS name),
    /// files `<dir>/<ca name>-<file>.{pem,key}`, with this CA as the CA.
    pub fn issue(&self, file: &str, host: &str, flaw: Flaw) -> TlsFiles {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().expect("a DNS name")),
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![san];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ic-proxy {file}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if flaw == Flaw::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        let stem = format!("{}-{file}", self.name);
        let files = TlsFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            ca: self.ca_file(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// A TLS policy of `mode` from `files`, which must load.
pub fn policy(mode: TlsMode, verify: TlsVerify, files: &TlsFiles) -> TlsPolicy {
    TlsPolicy::load(mode, verify, Some(files)).expect("the test's TLS files load")
}
