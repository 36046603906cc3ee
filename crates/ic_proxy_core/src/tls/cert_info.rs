//! The subject and validity dates of a certificate, read from its DER with
//! a small reader of the few X.509 fields `ic_proxy_info()` shows (the
//! certificate's checks are rustls' and webpki's, not this).

use rustls::pki_types::CertificateDer;

/// What the status shows of a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as `CN=..., O=...` (the attributes it knows, in order).
    pub subject: String,
    /// Seconds since the epoch.
    pub not_before: u64,
    pub not_after: u64,
}

/// One DER element: its tag and contents.
struct Element<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Reads one element off the front of `b`; the rest after it.
fn element(b: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((
        Element {
            tag,
            body: &rest[..len],
        },
        &rest[len..],
    ))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;

impl CertInfo {
    /// None when the DER is not a certificate this reader understands.
    pub fn parse(der: &CertificateDer<'_>) -> Option<CertInfo> {
        let (cert, _) = element(der.as_ref())?;
        if cert.tag != SEQUENCE {
            return None;
        }
        let (tbs, _) = element(cert.body)?;
        let mut rest = tbs.body;
        let mut next = || -> Option<Element<'_>> {
            let (e, r) = element(rest)?;
            rest = r;
            Some(e)
        };
        // An optional version, the serial number, the signature algorithm
        // and the issuer come before the validity.
        let first = next()?;
        if first.tag == VERSION {
            let _serial = next()?;
        }
        let _signature = next()?;
        let _issuer = next()?;
        let validity = next()?;
        let subject = next()?;
        if validity.tag != SEQUENCE || subject.tag != SEQUENCE {
            return None;
        }
        let (not_before, after) = element(validity.body)?;
        let (not_after, _) = element(after)?;
        Some(CertInfo {
            subject: name(subject.body),
            not_before: time(&not_before)?,
            not_after: time(&not_after)?,
        })
    }
}

/// `CN=..., O=...` from a Name's RDN sequence.
fn name(mut rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((set, rest)) = element(rdns) {
        rdns = rest;
        if set.tag != SET {
            continue;
        }
        let mut atvs = set.body;
        while let Some((atv, rest)) = element(atvs) {
            atvs = rest;
            let Some((oid, value)) = element(atv.body) else {
                continue;
            };
            let Some((value, _)) = element(value) else {
                continue;
            };
            if oid.tag != OID {
                continue;
            }
            let key = match oid.body {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x06] => "C",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value.body)));
        }
    }
    parts.join(", ")
}

/// A UTCTime or GeneralizedTime (`...Z`) as seconds since the epoch.
fn time(e: &Element<'_>) -> Option<u64> {
    let s = std::str::from_utf8(e.body).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match e.tag {
        UTC_TIME if s.len() == 12 => {
            let yy: i64 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        GENERALIZED_TIME if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + sec).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` of seconds since the epoch.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // The inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_the_civil_calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_796_083_200 + 3661), "2026-12-01 01:01:01 UTC");
    }

    #[test]
    fn a_generated_certificate_shows_its_subject_and_dates() {
        let mut params = rcgen::CertificateParams::new(vec!["sdw1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ic-proxy sdw1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster");
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).expect("parsed");
        assert_eq!(info.subject, "CN=ic-proxy sdw1, O=cluster");
        assert_eq!(format_utc(info.not_before), "2026-01-02 00:00:00 UTC");
        // 2049 is a UTCTime (two-digit year); 2050 and later would be
        // GeneralizedTime.
        assert_eq!(format_utc(info.not_after), "2049-12-31 00:00:00 UTC");
        let mut params = rcgen::CertificateParams::new(vec!["sdw2".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2100, 6, 30);
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).expect("parsed");
        assert_eq!(format_utc(info.not_after), "2100-06-30 00:00:00 UTC");
    }

    #[test]
    fn what_is_not_a_certificate_is_none_not_a_panic() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
            b"hello",
        ] {
            assert_eq!(CertInfo::parse(&CertificateDer::from(junk.to_vec())), None);
        }
    }
}
