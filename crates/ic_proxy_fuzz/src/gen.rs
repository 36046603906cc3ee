//! Input generators: purely random inputs, valid inputs (what a real peer,
//! backend or administrator would send), and valid inputs mutated, first
//! with structure-aware edits (one packet's length or type set to a
//! boundary, a magic broken) and then byte-level ones.

use bytes::BytesMut;
use ic_proxy_core::auth::AuthMessage;
use ic_proxy_core::protocol::{
    encode_packet, ictcp_packet, Dialect, Endpoint, Header, PacketType, MAGIC,
};

use crate::mutate::mutate;
use crate::rng::Rng;
use crate::targets::{PeerCfg, Target, ICTCP_MAXES, STREAM_PREFIX};

/// One input for `target`.
pub fn generate(target: Target, rng: &mut Rng) -> Vec<u8> {
    match target {
        Target::PeerDecoder => peer_input(rng, true),
        Target::Header => header_input(rng),
        Target::IcTcp => ictcp_input(rng),
        Target::Auth => auth_input(rng),
        Target::AddressMap => map_input(rng),
    }
}

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.size(max)];
    rng.fill(&mut v);
    v
}

fn endpoint(rng: &mut Rng) -> Endpoint {
    Endpoint {
        content: *rng.pick(&[-1i16, 0, 1, 2, 99, i16::MAX, i16::MIN]),
        dbid: *rng.pick(&[1u16, 2, 3, 4, 100, 0, u16::MAX]),
        pid: rng.next_u64() as i32,
    }
}

fn header(rng: &mut Rng, ptype: PacketType) -> Header {
    Header {
        len: 0,
        ptype,
        src: endpoint(rng),
        dst: endpoint(rng),
        session_id: {
            let any = rng.next_u64() as i32;
            *rng.pick(&[0, 77, i32::MIN, i32::MIN + 1, any])
        },
        command_id: rng.next_u64() as u32,
        send_slice: rng.below(8) as i16 - 1,
        recv_slice: rng.below(8) as i16 - 1,
    }
}

/// A valid peer stream: messages and DATA packets of assorted sizes, with
/// the offsets where each packet starts.
fn peer_stream(rng: &mut Rng, cfg: PeerCfg) -> (Vec<u8>, Vec<usize>) {
    let d = cfg.dialect;
    let max = cfg.max_payload.min(usize::from(u16::MAX) - d.header_len());
    let mut out = BytesMut::new();
    let mut starts = Vec::new();
    for _ in 0..rng.range(1, 12) {
        starts.push(out.len());
        let ptype = if rng.chance(50) {
            PacketType::Data
        } else {
            *rng.pick(&PacketType::ALL)
        };
        let size = if ptype == PacketType::Data {
            match rng.below(8) {
                0 => 0,
                1 => max,
                2 => max.saturating_sub(1),
                3 => 1.min(max),
                _ => rng.size(max),
            }
        } else {
            0
        };
        let mut payload = vec![0u8; size];
        rng.fill(&mut payload);
        encode_packet(&header(rng, ptype), d, &payload, &mut out);
    }
    (out.to_vec(), starts)
}

/// Structure-aware damage to one packet of a peer stream: its length, type
/// or magic set to a boundary value.
fn damage_packet(rng: &mut Rng, stream: &mut [u8], starts: &[usize], cfg: PeerCfg) {
    let d = cfg.dialect;
    let hl = d.header_len();
    let o = hl - 32;
    let at = *rng.pick(starts);
    if at + hl > stream.len() {
        return;
    }
    let max = cfg.max_packet();
    match rng.below(4) {
        0 | 1 => {
            let len = *rng.pick(&[
                0,
                1,
                hl - 1,
                hl,
                hl + 1,
                max.saturating_sub(1),
                max,
                max + 1,
                usize::from(u16::MAX),
            ]) as u16;
            stream[at + o..at + o + 2].copy_from_slice(&len.to_ne_bytes());
        }
        2 => {
            let t = *rng.pick(&[
                0u16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFFFF, 0xBADD, 0xCAFE, 0x8000,
            ]);
            stream[at + o + 2..at + o + 4].copy_from_slice(&t.to_ne_bytes());
        }
        _ => {
            if d == Dialect::C {
                let m = *rng.pick(&[0u32, 0xDEAD_BEEF, MAGIC.swap_bytes(), MAGIC ^ 1]);
                stream[at..at + 4].copy_from_slice(&m.to_ne_bytes());
            } else {
                // A dialect C packet's magic where a B length and type belong.
                stream[at..at + 4].copy_from_slice(&MAGIC.to_ne_bytes());
            }
        }
    }
}

fn peer_cfg(rng: &mut Rng) -> PeerCfg {
    let mut cfg = PeerCfg::from_byte(rng.byte());
    // Mostly realistic sizes: big maxima make slow inputs.
    if rng.chance(70) {
        cfg.max_payload = *rng.pick(&[512, 4096, 8192]);
    }
    cfg
}

fn prefix(cfg: u8, rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::with_capacity(STREAM_PREFIX);
    v.push(cfg);
    v.extend_from_slice(&rng.next_u64().to_le_bytes());
    v
}

fn binary_dict() -> Vec<&'static [u8]> {
    vec![
        b"\xFE\xCA\xDD\xBA",
        b"\xBA\xDD\xCA\xFE",
        b"\x20\x00\x04\x00",
        b"\x20\x00\x01\x00",
        b"\x24\x00\x00\x00",
        b"ICPA\x01",
        b"S",
        b"\x00\x00\x00\x00",
        b"\xFF\xFF\xFF\xFF",
    ]
}

fn peer_input(rng: &mut Rng, allow_random: bool) -> Vec<u8> {
    let cfg = peer_cfg(rng);
    let mut input = prefix(cfg.to_byte(), rng);
    if allow_random && rng.chance(15) {
        input.extend(random_bytes(rng, 70_000));
        return input;
    }
    let (mut stream, starts) = peer_stream(rng, cfg);
    if rng.chance(85) {
        if rng.chance(60) {
            for _ in 0..rng.range(1, 3) {
                damage_packet(rng, &mut stream, &starts, cfg);
            }
        }
        if rng.chance(70) {
            let hl = cfg.dialect.header_len();
            let max = cfg.max_packet();
            let e16: Vec<u16> = [hl - 1, hl, hl + 1, max, max + 1]
                .iter()
                .map(|&v| v.min(65535) as u16)
                .collect();
            let (other, _) = peer_stream(rng, cfg);
            mutate(rng, &mut stream, 8, &e16, &[MAGIC], &binary_dict(), &other);
        }
    }
    input.extend(stream);
    // Now and then the configuration bytes are damaged too.
    if rng.chance(3) {
        let i = rng.below(STREAM_PREFIX);
        input[i] = rng.byte();
    }
    input
}

fn header_input(rng: &mut Rng) -> Vec<u8> {
    // A header is the first bytes of a peer stream, cut anywhere.
    let mut v = peer_input(rng, true);
    let cfg = v[0];
    v.drain(..STREAM_PREFIX);
    if rng.chance(30) {
        v.truncate(rng.below(40));
    }
    v.insert(0, cfg);
    v
}

fn ictcp_input(rng: &mut Rng) -> Vec<u8> {
    let cfg = rng.below(ICTCP_MAXES.len()) as u8;
    let mut input = prefix(cfg, rng);
    if rng.chance(15) {
        input.extend(random_bytes(rng, 70_000));
        return input;
    }
    // Packets up to 70 KB, streams up to about 170 KB: longer ones test
    // nothing more and slow the run down.
    let max = ICTCP_MAXES[usize::from(cfg)].min(70_000);
    let mut out = BytesMut::new();
    let mut starts = Vec::new();
    if max >= 4 {
        for _ in 0..rng.range(1, 24) {
            if out.len() > 100_000 {
                break;
            }
            starts.push(out.len());
            let size = match rng.below(12) {
                0 => max - 4,
                1 | 2 => 0,
                3 => (max - 4).saturating_sub(1),
                _ => rng.size(max - 4),
            };
            let mut payload = vec![0u8; size];
            rng.fill(&mut payload);
            ictcp_packet(&payload, &mut out);
        }
    }
    let mut stream = out.to_vec();
    if rng.chance(10) {
        // The lone STOP byte a receiver sends.
        stream.push(b'S');
    }
    if rng.chance(85) {
        if !starts.is_empty() && rng.chance(50) {
            let at = *rng.pick(&starts);
            let len = *rng.pick(&[0u32, 1, 2, 3, 4, 5, max as u32, max as u32 + 1, u32::MAX]);
            stream[at..at + 4].copy_from_slice(&len.to_ne_bytes());
        }
        let extra = [0u32, 3, 4, max as u32, max as u32 + 1];
        mutate(rng, &mut stream, 8, &[], &extra, &binary_dict(), b"");
    }
    input.extend(stream);
    input
}

fn auth_input(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(10) {
        return random_bytes(rng, 200);
    }
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    rng.fill(&mut a);
    rng.fill(&mut b);
    let m = match rng.below(3) {
        0 => AuthMessage::Challenge { nonce_a: a },
        1 => AuthMessage::Response { nonce_c: a, mac: b },
        _ => AuthMessage::Confirm { mac: a },
    };
    let mut v = m.encode();
    if rng.chance(80) {
        let other = AuthMessage::Confirm { mac: b }.encode();
        mutate(
            rng,
            &mut v,
            4,
            &[],
            &[],
            &[b"ICPA", b"\x01", b"\x02", b"\x03"],
            &other,
        );
    }
    v
}

const HOSTS: &[&str] = &[
    "cdw",
    "sdw1",
    "sdw-2.example.com",
    "host_x",
    "127.0.0.1",
    "10.0.0.255",
    "[::1]",
    "[fe80::1]",
    "[::ffff:1.2.3.4]",
    "localhost",
    "LOCALHOST",
];

fn map_text(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(10) {
        s.push(' ');
    }
    for i in 0..rng.range(1, 8) {
        if i > 0 {
            let sep: &str = rng.pick::<&str>(&[",", ", ", ",\n", " ,"]);
            s.push_str(sep);
        }
        let dbid = *rng.pick(&[1u32, 2, 3, 4, 5, 65535, 65536, 0, i as u32 + 1]);
        let content = *rng.pick(&[-1i32, 0, 1, 2, 32767, 32768, -2, i as i32 - 1]);
        let port = *rng.pick(&[1u32, 7000, 7001 + i as u32, 65535, 65536, 0]);
        let host: &str = rng.pick::<&str>(HOSTS);
        s.push_str(&format!("{dbid}:{content}:{host}:{port}"));
    }
    s
}

fn map_input(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(10) {
        return random_bytes(rng, 300);
    }
    let mut v = map_text(rng).into_bytes();
    if rng.chance(85) {
        let other = map_text(rng).into_bytes();
        let dict: &[&[u8]] = &[
            b":",
            b",",
            b"[",
            b"]",
            b"-",
            b"-1",
            b"0",
            b"65535",
            b"65536",
            b"99999999999999999999999",
            b"::1",
            b"%eth0",
            b"127.0.0.1",
            b"256.1.1.1",
            b"1.2.3",
            b" ",
            b"\n",
            b"'",
            b"\"",
            "\u{e9}".as_bytes(),
            "\u{0}".as_bytes(),
            "\u{ff1a}".as_bytes(),
            b"+1",
            b"[::ffff:1.2.3.4]",
        ];
        mutate(rng, &mut v, 6, &[], &[], dict, &other);
    }
    v
}
