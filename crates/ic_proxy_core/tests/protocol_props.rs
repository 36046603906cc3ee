//! Property tests of the wire protocol: header round trips, the stream
//! decoder against arbitrary input and arbitrary chopping, and ic-tcp runs.

use bytes::BytesMut;
use ic_proxy_core::protocol::{
    encode_packet, ictcp_packet, Dialect, Endpoint, Header, IcTcpFramer, PacketDecoder, PacketType,
    MAX_PACKET_SIZE_LIMIT, MIN_PACKET_SIZE,
};
use proptest::prelude::*;

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::B), Just(Dialect::C)]
}

fn packet_type() -> impl Strategy<Value = PacketType> {
    proptest::sample::select(PacketType::ALL.to_vec())
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (any::<i16>(), any::<u16>(), any::<i32>()).prop_map(|(content, dbid, pid)| Endpoint {
        content,
        dbid,
        pid,
    })
}

/// A header that is valid in dialect `d` with payloads up to `max_payload`.
fn header(d: Dialect, max_payload: usize) -> impl Strategy<Value = Header> {
    (
        packet_type(),
        0..=max_payload,
        endpoint(),
        endpoint(),
        any::<i32>(),
        any::<u32>(),
        any::<i16>(),
        any::<i16>(),
    )
        .prop_map(
            move |(ptype, payload, src, dst, session_id, command_id, send_slice, recv_slice)| {
                let payload = if ptype.is_message() { 0 } else { payload };
                Header {
                    len: (d.header_len() + payload) as u16,
                    ptype,
                    src,
                    dst,
                    session_id,
                    command_id,
                    send_slice,
                    recv_slice,
                }
            },
        )
}

/// Packets (header, payload) for one stream.
fn packets(d: Dialect, max_payload: usize) -> impl Strategy<Value = Vec<(Header, Vec<u8>)>> {
    proptest::collection::vec(
        (header(d, max_payload), any::<u8>()).prop_map(move |(h, fill)| {
            let payload = (0..h.payload_len(d))
                .map(|i| fill.wrapping_add(i as u8))
                .collect();
            (h, payload)
        }),
        0..12,
    )
}

fn drain(dec: &PacketDecoder, buf: &mut BytesMut, got: &mut Vec<(Header, Vec<u8>)>) {
    while let Some(p) = dec.decode(buf).expect("valid stream") {
        got.push((p.header, p.payload.to_vec()));
    }
}

proptest! {
    #[test]
    fn header_round_trip(
        (d, h) in dialect().prop_flat_map(|d| (Just(d), header(d, MAX_PACKET_SIZE_LIMIT)))
    ) {
        let enc = h.encode(d);
        prop_assert_eq!(enc.len(), d.header_len());
        prop_assert_eq!(Header::decode(&enc, d, MAX_PACKET_SIZE_LIMIT), Ok(h));
    }

    #[test]
    fn decoder_survives_arbitrary_bytes(
        d in dialect(),
        max_payload in MIN_PACKET_SIZE..=MAX_PACKET_SIZE_LIMIT,
        magic_first in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk in 1usize..300,
    ) {
        let dec = PacketDecoder::new(d, max_payload);
        let bound = d.header_len() + max_payload;
        let mut input = Vec::new();
        if magic_first {
            // Get past the magic check often enough to exercise the rest.
            input.extend_from_slice(&ic_proxy_core::protocol::MAGIC.to_ne_bytes());
        }
        input.extend_from_slice(&bytes);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        'feed: loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(p)) => {
                        prop_assert!(p.header.len as usize <= bound);
                        prop_assert_eq!(p.payload.len(), p.header.payload_len(d));
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
                prop_assert!(buf.capacity() <= bound, "{} > {}", buf.capacity(), bound);
            }
            prop_assert!(buf.capacity() <= bound, "{} > {}", buf.capacity(), bound);
            if fed == input.len() {
                break;
            }
            // Fill only the room the decoder made, as read_buf would.
            let n = (buf.capacity() - buf.len()).min(chunk).min(input.len() - fed);
            prop_assert!(n > 0);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
        }
    }

    #[test]
    fn chopped_stream_decodes_to_the_same_packets(
        (d, max_payload, want) in (dialect(), MIN_PACKET_SIZE..=4096usize)
            .prop_flat_map(|(d, max)| (Just(d), Just(max), packets(d, max))),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
    ) {
        let mut stream = BytesMut::new();
        for (h, payload) in &want {
            encode_packet(h, d, payload, &mut stream);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let dec = PacketDecoder::new(d, max_payload);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut from = 0;
        for to in cuts {
            buf.extend_from_slice(&stream[from..to]);
            from = to;
            drain(&dec, &mut buf, &mut got);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, want);
    }

    #[test]
    fn complete_runs_are_bounded_whole_packet_prefixes(
        max in 4usize..2000,
        sizes in proptest::collection::vec(0usize..2000, 0..40),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut stream = BytesMut::new();
        let mut ends = vec![0];
        for s in sizes {
            let payload_len = s % (max - 3);
            ictcp_packet(&vec![0x5A; payload_len], &mut stream);
            ends.push(stream.len());
        }
        let buf = &stream[..cut.index(stream.len() + 1)];
        let framer = IcTcpFramer { max_packet_size: max };
        let mut runs = Vec::new();
        prop_assert!(framer.complete_runs(buf, &mut runs).is_ok());

        // Each run is non-empty, fits one DATA payload, ends on a packet
        // boundary, and is greedy: it could not also take the next packet.
        let mut at = 0;
        for (i, &run) in runs.iter().enumerate() {
            prop_assert!(run > 0 && run <= max, "run {} max {}", run, max);
            at += run;
            let end = ends.iter().position(|&e| e == at);
            prop_assert!(end.is_some(), "run ends inside a packet at {}", at);
            if i + 1 < runs.len() {
                let end = end.unwrap();
                let next_packet = ends[end + 1] - ends[end];
                prop_assert!(run + next_packet > max);
            }
        }
        // Together they are every complete packet in buf, and no more.
        let whole = ends.iter().copied().filter(|&e| e <= buf.len()).max().unwrap();
        prop_assert_eq!(at, whole);
    }
}
