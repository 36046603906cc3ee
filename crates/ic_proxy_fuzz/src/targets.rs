//! The fuzz targets and their invariants. Each target takes one byte string
//! (what a corpus file holds): a few leading bytes choose the configuration
//! (dialect, maximum packet size, how the stream is cut into reads), the rest
//! is the input proper. A target returns `Err` when an invariant breaks; a
//! panic is caught by the runner. Either is a failure.
//!
//! Invariants, for every input:
//! * no panic;
//! * the peer-stream decoder never lets its buffer grow past one maximum
//!   packet (header + max payload) beyond what the caller gave it, always
//!   leaves room to read into when it needs more, rejects a bad header as soon
//!   as its bytes are present, and decodes a stream the same way whatever the
//!   reads' sizes;
//! * every packet decoded re-encodes to exactly the bytes it came from;
//! * every error is the documented variant with the documented fields, as an
//!   independent reference model of the header computes them;
//! * ic-tcp framing: runs hold whole packets, at most max_packet_size bytes
//!   each, grouped greedily; what stays buffered is less than one packet;
//! * authentication messages re-encode to their bytes, or are `Malformed`;
//! * an address map that parses prints canonically and parses back equal,
//!   and `check` agrees with `parse`.

use std::fmt;

use bytes::BytesMut;
use ic_proxy_core::address_map::AddressMap;
use ic_proxy_core::auth::{AuthError, AuthMessage};
use ic_proxy_core::protocol::{
    encode_packet, sniff_dialect, Dialect, FrameError, Header, HeaderError, IcTcpFramer,
    PacketDecoder, PacketType, MAGIC, MAX_PACKET_SIZE_LIMIT,
};

use crate::rng::Rng;

/// One decoder under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `PacketDecoder` over a peer stream cut into random reads.
    PeerDecoder,
    /// `Header::decode` and `sniff_dialect` on one buffer.
    Header,
    /// `IcTcpFramer::complete_runs` / `complete_len` as a backend session uses them.
    IcTcp,
    /// `auth::AuthMessage::decode`.
    Auth,
    /// `AddressMap::parse` / `check`.
    AddressMap,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::PeerDecoder,
        Target::Header,
        Target::IcTcp,
        Target::Auth,
        Target::AddressMap,
    ];

    /// The name on the command line and of the corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::PeerDecoder => "peer_decoder",
            Target::Header => "header",
            Target::IcTcp => "ictcp",
            Target::Auth => "auth",
            Target::AddressMap => "address_map",
        }
    }

    pub fn from_name(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Runs the target on one input; `tally` records which outcome it reached.
    pub fn check(self, input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
        match self {
            Target::PeerDecoder => check_peer_decoder(input, tally),
            Target::Header => check_header(input, tally),
            Target::IcTcp => check_ictcp(input, tally),
            Target::Auth => check_auth(input, tally),
            Target::AddressMap => check_address_map(input, tally),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($arg)+)));
        }
    };
}

/// Which outcomes a run reached, to show the inputs got past the first check.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Outcome name -> count; a short fixed list, so a Vec is enough.
    pub outcomes: Vec<(&'static str, u64)>,
    /// Largest capacity a peer-stream decoder's buffer reached.
    pub max_decoder_capacity: usize,
    /// Largest number of bytes an ic-tcp session kept buffered.
    pub max_ictcp_leftover: usize,
}

impl Tally {
    pub fn hit(&mut self, what: &'static str) {
        match self.outcomes.iter_mut().find(|(k, _)| *k == what) {
            Some((_, n)) => *n += 1,
            None => self.outcomes.push((what, 1)),
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, n) in &other.outcomes {
            match self.outcomes.iter_mut().find(|(x, _)| x == k) {
                Some((_, m)) => *m += n,
                None => self.outcomes.push((k, *n)),
            }
        }
        self.max_decoder_capacity = self.max_decoder_capacity.max(other.max_decoder_capacity);
        self.max_ictcp_leftover = self.max_ictcp_leftover.max(other.max_ictcp_leftover);
    }
}

/// The maximum payloads (gp_max_packet_size) a peer decoder is tried with:
/// the legal range's ends and default, and values outside it.
pub const PEER_MAXES: [usize; 8] = [
    0,
    1,
    512,
    4096,
    8192,
    MAX_PACKET_SIZE_LIMIT,
    65535,
    usize::MAX,
];

/// The max_packet_size values an ic-tcp framer is tried with.
pub const ICTCP_MAXES: [usize; 8] = [0, 3, 4, 5, 512, 8192, MAX_PACKET_SIZE_LIMIT, 1 << 20];

/// Bytes before a stream: configuration, then the seed of the read sizes.
pub const STREAM_PREFIX: usize = 9;

/// The configuration byte of the peer-decoder and header targets.
#[derive(Clone, Copy, Debug)]
pub struct PeerCfg {
    pub dialect: Dialect,
    pub max_payload: usize,
    /// 0: empty buffer; 1: 4 KB (as a handshake reader starts); 2: one max packet.
    pub initial: u8,
    /// Keep every packet's payload alive (as a router queue does), which
    /// stops the decoder from reusing its buffer.
    pub keep: bool,
}

impl PeerCfg {
    pub fn from_byte(b: u8) -> PeerCfg {
        PeerCfg {
            dialect: if b & 1 == 0 { Dialect::B } else { Dialect::C },
            max_payload: PEER_MAXES[usize::from((b >> 1) & 7)],
            initial: (b >> 4) & 3,
            keep: b & 0x40 != 0,
        }
    }

    pub fn to_byte(self) -> u8 {
        let d = u8::from(self.dialect == Dialect::C);
        let m = PEER_MAXES
            .iter()
            .position(|&m| m == self.max_payload)
            .unwrap_or(4) as u8;
        d | (m << 1) | ((self.initial & 3) << 4) | (u8::from(self.keep) << 6)
    }

    /// The largest packet the decoder may accept: header + max payload, at
    /// most what the u16 length can say.
    pub fn max_packet(self) -> usize {
        self.dialect
            .header_len()
            .saturating_add(self.max_payload)
            .min(usize::from(u16::MAX))
    }
}

fn split_stream(input: &[u8]) -> (u8, u64, &[u8]) {
    let cfg = input.first().copied().unwrap_or(0);
    let mut seed = [0u8; 8];
    let n = input.len().saturating_sub(1).min(8);
    seed[..n].copy_from_slice(&input[1..1 + n]);
    let rest = input.get(STREAM_PREFIX..).unwrap_or(&[]);
    (cfg, u64::from_le_bytes(seed), rest)
}

/// How a stream is cut into reads: 0 one byte at a time (short streams
/// only, to keep inputs fast), 1 small reads, 2 large reads, 3 a mix.
fn read_style(rng: &mut Rng, stream_len: usize) -> usize {
    match rng.below(4) {
        0 if stream_len > 8192 => 3,
        s => s,
    }
}

/// Read sizes of one cut of a stream: single bytes, small and large reads.
fn next_read(rng: &mut Rng, style: usize) -> usize {
    match style {
        0 => 1,
        1 => rng.range(1, 64),
        2 => rng.range(1, 70_000),
        _ => match rng.below(4) {
            0 => 1,
            1 => rng.range(1, 40),
            2 => rng.range(1, 9000),
            _ => rng.range(1, 70_000),
        },
    }
}

// ---------------------------------------------------------------------------
// The header: a reference model, field by field.

fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What `Header::decode` must answer, computed independently from the
/// protocol description: only the verdict, the decoded fields are checked by
/// re-encoding.
fn reference_header(buf: &[u8], d: Dialect, max_payload: usize) -> Result<(), HeaderError> {
    let hl = d.header_len();
    if buf.len() < hl {
        return Err(HeaderError::Short {
            have: buf.len(),
            need: hl,
        });
    }
    let o = if d == Dialect::C {
        if rd32(buf, 0) != MAGIC {
            return Err(HeaderError::BadMagic {
                found: rd32(buf, 0),
            });
        }
        4
    } else {
        0
    };
    let len = rd16(buf, o);
    let ptype = rd16(buf, o + 2);
    if ptype > 7 {
        return Err(HeaderError::UnknownType { value: ptype });
    }
    if usize::from(len) < hl {
        return Err(HeaderError::LengthBelowHeader { len, header: hl });
    }
    let max = hl.saturating_add(max_payload);
    if usize::from(len) > max {
        return Err(HeaderError::LengthAboveMax { len, max });
    }
    if ptype != 0 && usize::from(len) != hl {
        return Err(HeaderError::PayloadOnMessage {
            ptype: PacketType::ALL[usize::from(ptype)],
            len,
        });
    }
    Ok(())
}

fn error_name(e: &HeaderError) -> &'static str {
    match e {
        HeaderError::Short { .. } => "header: short",
        HeaderError::BadMagic { .. } => "header: bad magic",
        HeaderError::LengthBelowHeader { .. } => "header: length below header",
        HeaderError::LengthAboveMax { .. } => "header: length above max",
        HeaderError::UnknownType { .. } => "header: unknown type",
        HeaderError::PayloadOnMessage { .. } => "header: payload on a message",
        _ => "header: UNDOCUMENTED ERROR",
    }
}

/// Decodes one header and compares with the model: same verdict, same error
/// fields, and an Ok header re-encodes to exactly its bytes.
fn header_agrees(
    buf: &[u8],
    d: Dialect,
    max_payload: usize,
    tally: &mut Tally,
) -> Result<Option<Header>, Violation> {
    let got = Header::decode(buf, d, max_payload);
    let want = reference_header(buf, d, max_payload);
    match (&got, &want) {
        (Ok(h), Ok(())) => {
            let hl = d.header_len();
            let enc = h.encode(d);
            ensure!(
                enc[..] == buf[..hl],
                "header re-encodes differently: {:02x?} from {:02x?}",
                &enc[..],
                &buf[..hl]
            );
            ensure!(
                h.payload_len(d) == usize::from(h.len) - hl,
                "payload_len {} for len {}",
                h.payload_len(d),
                h.len
            );
            // Its Display never fails.
            let _ = h.to_string();
            tally.hit("header: ok");
            Ok(Some(*h))
        }
        (Err(e), Err(w)) if e == w => {
            ensure!(
                error_name(e) != "header: UNDOCUMENTED ERROR",
                "undocumented header error {e:?}"
            );
            let _ = e.to_string();
            tally.hit(error_name(e));
            Ok(None)
        }
        _ => Err(Violation(format!(
            "Header::decode({d:?}, max {max_payload}) = {got:?}, expected {want:?}"
        ))),
    }
}

fn reference_sniff(b: &[u8]) -> Option<Dialect> {
    if b.len() < 4 {
        return None;
    }
    if b[..4] == MAGIC.to_ne_bytes() {
        return Some(Dialect::C);
    }
    (rd16(b, 0) == 32 && rd16(b, 2) <= 7).then_some(Dialect::B)
}

fn check_header(input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
    let cfg = PeerCfg::from_byte(input.first().copied().unwrap_or(0));
    let buf = input.get(1..).unwrap_or(&[]);
    header_agrees(buf, cfg.dialect, cfg.max_payload, tally)?;
    let first4 = &buf[..buf.len().min(4)];
    ensure!(
        sniff_dialect(first4) == reference_sniff(first4),
        "sniff_dialect({first4:02x?}) = {:?}",
        sniff_dialect(first4)
    );
    if buf.len() >= 4 {
        let t = rd16(buf, 2);
        let parsed = PacketType::try_from(t);
        ensure!(
            parsed.is_ok() == (t <= 7),
            "PacketType::try_from({t}) = {parsed:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The peer-stream decoder.

/// How a stream ended: what was decoded, then an error or the bytes still
/// waiting for more input.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    packets: Vec<(Header, Vec<u8>)>,
    end: Result<usize, HeaderError>,
}

fn decode_whole(dec: &PacketDecoder, stream: &[u8]) -> Decoded {
    let mut buf = BytesMut::from(stream);
    let mut packets = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(p)) => packets.push((p.header, p.payload.to_vec())),
            Ok(None) => {
                return Decoded {
                    packets,
                    end: Ok(buf.len()),
                }
            }
            Err(e) => {
                return Decoded {
                    packets,
                    end: Err(e),
                }
            }
        }
    }
}

fn check_peer_decoder(input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
    let (cfg_byte, seed, stream) = split_stream(input);
    let cfg = PeerCfg::from_byte(cfg_byte);
    let d = cfg.dialect;
    let hl = d.header_len();
    let dec = PacketDecoder::new(d, cfg.max_payload);
    let bound = cfg.max_packet();
    let mut buf = match cfg.initial {
        1 => BytesMut::with_capacity(4096),
        2 => BytesMut::with_capacity(bound),
        _ => BytesMut::new(),
    };
    let allowed = bound.max(buf.capacity());
    let mut rng = Rng::new(seed);
    let style = read_style(&mut rng, stream.len());

    let mut kept = Vec::new();
    let mut packets = Vec::new();
    // Offset in `stream` of the first byte in `buf`.
    let mut at = 0usize;
    let mut fed = 0usize;
    let end = loop {
        // Decode everything complete, as a link reader does after each read.
        let r = loop {
            let before = buf.len();
            let r = dec.decode(&mut buf);
            ensure!(
                buf.capacity() <= allowed,
                "decoder grew its buffer to {} bytes, over one max packet ({bound}) and the caller's {}",
                buf.capacity(),
                allowed
            );
            tally.max_decoder_capacity = tally.max_decoder_capacity.max(buf.capacity());
            match r {
                Ok(Some(p)) => {
                    let total = usize::from(p.header.len);
                    ensure!(
                        before - buf.len() == total && total == hl + p.payload.len(),
                        "packet of len {} took {} bytes with a {}-byte payload",
                        p.header.len,
                        before - buf.len(),
                        p.payload.len()
                    );
                    let mut re = BytesMut::new();
                    encode_packet(&p.header, d, &p.payload, &mut re);
                    ensure!(
                        re[..] == stream[at..at + total],
                        "packet at offset {at} does not re-encode to its bytes"
                    );
                    ensure!(
                        reference_header(&stream[at..at + hl], d, cfg.max_payload).is_ok(),
                        "decoder accepted a header the model rejects at offset {at}"
                    );
                    at += total;
                    tally.hit(if p.header.ptype == PacketType::Data {
                        "peer: DATA packet"
                    } else {
                        "peer: message"
                    });
                    packets.push((p.header, p.payload.to_vec()));
                    if cfg.keep {
                        kept.push(p.payload);
                    }
                }
                Ok(None) => {
                    ensure!(
                        buf.capacity() > buf.len(),
                        "decoder needs more bytes but left no room to read them into"
                    );
                    if buf.len() >= hl {
                        // A header it waits behind must be valid.
                        let h = Header::decode(&buf[..hl], d, cfg.max_payload).map_err(|e| {
                            Violation(format!(
                                "decoder waits for more bytes behind a bad header ({e})"
                            ))
                        })?;
                        ensure!(
                            buf.len() < usize::from(h.len),
                            "decoder waits although the whole packet is buffered"
                        );
                    }
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = r {
            // The error is the model's verdict on the header at the front.
            ensure!(buf.len() >= hl, "error {e:?} before a whole header");
            let want = reference_header(&buf[..hl], d, cfg.max_payload);
            ensure!(
                want.as_ref().err() == Some(&e),
                "decoder said {e:?}, the model says {want:?}"
            );
            ensure!(
                !matches!(e, HeaderError::Short { .. }),
                "the stream decoder reported a short header"
            );
            break Err(e);
        }
        if fed == stream.len() {
            break Ok(buf.len());
        }
        // Read only into the room the decoder left, as tokio's read_buf does
        // into a buffer its caller does not grow.
        let room = buf.capacity() - buf.len();
        let n = next_read(&mut rng, style).min(room).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
    };
    tally.hit(match &end {
        Ok(0) => "peer: clean end",
        Ok(_) => "peer: waiting for more",
        Err(e) => error_name(e),
    });

    // Whatever the reads' sizes, the same packets and the same end.
    let chunked = Decoded { packets, end };
    let whole = decode_whole(&dec, stream);
    if chunked.end.is_ok() && whole.end.is_ok() {
        ensure!(
            chunked == whole,
            "cut into reads, the stream decodes differently than whole"
        );
    } else {
        ensure!(
            chunked.packets == whole.packets && chunked.end.is_err() == whole.end.is_err(),
            "cut into reads, the stream decodes differently than whole: {:?} vs {:?}",
            chunked.end,
            whole.end
        );
        if let (Err(a), Err(b)) = (&chunked.end, &whole.end) {
            ensure!(a == b, "different errors: {a:?} vs {b:?}");
        }
    }
    drop(kept);
    Ok(())
}

// ---------------------------------------------------------------------------
// ic-tcp framing.

fn reference_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = rd32(buf, 0);
    let n = len as usize;
    if n < 4 {
        return Err(FrameError::LengthBelowMinimum { len });
    }
    if n > max {
        return Err(FrameError::LengthAboveMax { len, max });
    }
    Ok((buf.len() >= n).then_some(n))
}

fn frame_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::LengthBelowMinimum { .. } => "ictcp: length below 4",
        FrameError::LengthAboveMax { .. } => "ictcp: length above max",
        _ => "ictcp: UNDOCUMENTED ERROR",
    }
}

/// Checks one `complete_runs` answer against the model; returns the packet
/// lengths the runs hold.
fn runs_agree(
    f: &IcTcpFramer,
    buf: &[u8],
    runs: &[usize],
    r: &Result<(), FrameError>,
) -> Result<Vec<usize>, Violation> {
    let max = f.max_packet_size;
    let mut lens = Vec::new();
    let mut at = 0;
    let want = loop {
        match reference_len(&buf[at..], max) {
            Ok(Some(n)) => {
                lens.push(n);
                at += n;
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    ensure!(
        *r == want,
        "complete_runs said {r:?}, the model says {want:?}"
    );
    ensure!(
        f.complete_len(buf) == reference_len(buf, max),
        "complete_len disagrees with the model"
    );
    // Runs: whole packets, greedy, each within max_packet_size.
    let mut li = 0;
    let mut prev_run = None;
    for &run in runs {
        ensure!(run > 0 && run <= max, "run of {run} bytes, max {max}");
        let mut sum = 0;
        let first = lens.get(li).copied();
        while sum < run {
            let Some(&n) = lens.get(li) else {
                return Err(Violation(format!("run of {run} bytes beyond the packets")));
            };
            sum += n;
            li += 1;
        }
        ensure!(sum == run, "run of {run} bytes splits a packet");
        if let (Some(p), Some(first)) = (prev_run, first) {
            ensure!(
                p + first > max,
                "runs not greedy: a {first}-byte packet fits the {p}-byte run before it"
            );
        }
        prev_run = Some(run);
    }
    ensure!(li == lens.len(), "runs leave complete packets out");
    Ok(lens)
}

fn check_ictcp(input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
    let (cfg, seed, stream) = split_stream(input);
    let max = ICTCP_MAXES[usize::from(cfg & 7)];
    let f = IcTcpFramer {
        max_packet_size: max,
    };
    let mut runs = Vec::new();

    // The whole stream at once.
    let whole = f.complete_runs(stream, &mut runs);
    let whole_lens = runs_agree(&f, stream, &runs, &whole)?;

    // As a backend session does: read, frame, split the runs off, repeat.
    let mut rng = Rng::new(seed);
    let style = read_style(&mut rng, stream.len());
    let mut buf = BytesMut::new();
    let mut lens = Vec::new();
    let mut fed = 0;
    let end = loop {
        let n = next_read(&mut rng, style).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let r = f.complete_runs(&buf, &mut runs);
        lens.extend(runs_agree(&f, &buf, &runs, &r)?);
        for &run in &runs {
            let _ = buf.split_to(run);
        }
        if r.is_err() {
            break r;
        }
        // What stays is one incomplete packet: less than its length, which
        // is at most max_packet_size.
        if buf.len() >= 4 {
            let n = rd32(&buf, 0) as usize;
            ensure!(
                buf.len() < n && n <= max,
                "{} bytes stay buffered behind a length of {n} (max {max})",
                buf.len()
            );
        }
        tally.max_ictcp_leftover = tally.max_ictcp_leftover.max(buf.len());
        if fed == stream.len() {
            break r;
        }
    };
    ensure!(
        lens == whole_lens && end == whole,
        "cut into reads, the ic-tcp stream frames differently than whole"
    );
    tally.hit(match &end {
        Ok(()) if buf.is_empty() => "ictcp: clean end",
        Ok(()) => "ictcp: partial packet",
        Err(e) => frame_name(e),
    });
    if !lens.is_empty() {
        tally.hit("ictcp: packets framed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Peer-authentication messages.

fn check_auth(input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
    let got = AuthMessage::decode(input);
    let well_formed = input.len() >= 6
        && &input[..4] == b"ICPA"
        && input[4] == 1
        && matches!((input[5], input.len() - 6), (1, 32) | (2, 64) | (3, 32));
    match got {
        Ok(m) => {
            ensure!(well_formed, "decoded {m:?} from a malformed message");
            ensure!(m.encode() == input, "{m:?} does not re-encode to its bytes");
            tally.hit("auth: ok");
        }
        Err(AuthError::Malformed) => {
            ensure!(!well_formed, "a well-formed message was refused");
            tally.hit("auth: malformed");
        }
        Err(e) => return Err(Violation(format!("decode returned {e:?}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The address map.

fn check_address_map(input: &[u8], tally: &mut Tally) -> Result<(), Violation> {
    let s = String::from_utf8_lossy(input);
    let parsed = AddressMap::parse(&s);
    let problems = AddressMap::check(&s);
    match parsed {
        Ok(map) => {
            ensure!(problems.is_empty(), "parse accepted what check refuses");
            let canonical = map.to_string();
            let again = AddressMap::parse(&canonical).map_err(|e| {
                Violation(format!(
                    "the canonical form {canonical:?} does not parse: {e}"
                ))
            })?;
            ensure!(again == map, "the canonical form parses to another map");
            ensure!(
                AddressMap::from_entries(map.entries().to_vec()).as_ref() == Ok(&map),
                "from_entries disagrees with parse"
            );
            ensure!(
                AddressMap::diff(&map, &map).is_empty(),
                "a map differs from itself"
            );
            ensure!(
                AddressMap::diff(&AddressMap::default(), &map).added.len() == map.len(),
                "diff from empty misses entries"
            );
            for e in map.entries() {
                let _ = e.socket_addr_string();
            }
            tally.hit(if map.is_empty() {
                "map: empty"
            } else {
                "map: valid"
            });
        }
        Err(e) => {
            ensure!(
                !e.problems.is_empty() && e.problems == problems,
                "parse and check report different problems"
            );
            for p in &e.problems {
                ensure!(
                    !p.message().is_empty() && !p.hint().is_empty(),
                    "a problem without message or hint: {p:?}"
                );
            }
            let _ = e.to_string();
            tally.hit("map: invalid");
        }
    }
    Ok(())
}
