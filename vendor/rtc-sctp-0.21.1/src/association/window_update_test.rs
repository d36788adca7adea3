//! Zero-window recovery, one mechanism per test, without timers or sockets:
//! the receiver's immediate SACK for DATA it drops on a full buffer and its window-update SACK
//! once the application reads (RFC 4960 sec 6.2), and the sender's retransmission of a
//! zero-window probe as soon as a SACK reopens the window.

use super::*;

const MSG: usize = 1000;

fn established(max_receive_buffer_size: u32) -> Association {
    let mut a = Association::new(
        None,
        Arc::new(TransportConfig::default().with_max_receive_buffer_size(max_receive_buffer_size)),
        1400,
        0,
        SocketAddr::from_str("0.0.0.0:0").unwrap(),
        SocketAddr::from_str("0.0.0.0:0").unwrap(),
        TransportProtocol::UDP,
        Instant::now(),
    );
    a.control_queue.clear();
    a.timers.stop(Timer::T1Init);
    a.set_state(AssociationState::Established);
    a
}

/// One whole ordered message of `MSG` bytes on stream 1.
fn message(tsn: u32, ssn: u16) -> ChunkPayloadData {
    ChunkPayloadData {
        beginning_fragment: true,
        ending_fragment: true,
        tsn,
        stream_identifier: 1,
        stream_sequence_number: ssn,
        payload_type: PayloadProtocolIdentifier::Binary,
        user_data: Bytes::from(vec![0xab; MSG]),
        ..Default::default()
    }
}

/// What `handle_inbound` does for a packet carrying this one DATA chunk.
fn receive(r: &mut Association, c: &ChunkPayloadData, now: Instant) {
    r.handle_chunk_start();
    r.handle_data(c).unwrap();
    r.handle_chunk_end(now);
}

fn chunks_sent(a: &mut Association, now: Instant) -> Vec<Box<dyn Chunk>> {
    a.gather_outbound(now)
        .0
        .iter()
        .flat_map(|raw| Packet::unmarshal(raw).unwrap().chunks)
        .collect()
}

/// (cumulative TSN ack, a_rwnd) of each SACK sent.
fn sacks_sent(a: &mut Association, now: Instant) -> Vec<(u32, u32)> {
    chunks_sent(a, now)
        .iter()
        .filter_map(|c| c.as_any().downcast_ref::<ChunkSelectiveAck>())
        .map(|s| (s.cumulative_tsn_ack, s.advertised_receiver_window_credit))
        .collect()
}

fn data_tsns_sent(a: &mut Association, now: Instant) -> Vec<u32> {
    chunks_sent(a, now)
        .iter()
        .filter_map(|c| c.as_any().downcast_ref::<ChunkPayloadData>().map(|d| d.tsn))
        .collect()
}

/// A receiver whose 4-message buffer is full of unread messages (TSN 100..=103), every SACK
/// for them sent, the last one advertising a_rwnd = 0.
fn full_receiver(now: Instant) -> Association {
    let mut r = established(4 * MSG as u32);
    r.peer_last_tsn = 99;
    for i in 0..4u16 {
        receive(&mut r, &message(100 + i as u32, i), now);
    }
    let sacks = sacks_sent(&mut r, now);
    assert_eq!(0, sacks.last().unwrap().1);
    assert_eq!(0, r.get_my_receiver_window_credit());
    assert_eq!(AckState::Idle, r.ack_state);
    r
}

#[test]
fn dropped_data_is_sacked_immediately() {
    let now = Instant::now();
    let mut r = full_receiver(now);

    // The sender's zero-window probe arrives while the buffer is still full: dropped.
    receive(&mut r, &message(104, 4), now);

    // RFC 4960 sec 6.2: "the receiver MUST immediately send back a SACK with the current
    // receive window showing only DATA chunks received and accepted so far". Before, this one
    // went out only when the delayed-ack timer (200 ms) fired.
    assert_eq!(AckState::Immediate, r.ack_state);
    let sacks = sacks_sent(&mut r, now);
    assert_eq!(vec![(103, 0)], sacks, "the dropped TSN is not acknowledged");
}

#[test]
fn reading_a_full_buffer_sends_a_window_update() {
    let now = Instant::now();
    let mut r = full_receiver(now);

    // Freeing less than the threshold (max(buffer / 16, MTU)) is not worth a SACK: receiver
    // silly-window-syndrome avoidance, RFC 4960 sec 6.2.
    assert!(r.stream(1).unwrap().read_sctp().unwrap().is_some());
    assert_eq!(AckState::Idle, r.ack_state);
    assert!(sacks_sent(&mut r, now).is_empty());

    // The application catches up: the window reopens and the peer must hear of it now, not
    // at the next SACK the receiver happens to send.
    while r.stream(1).unwrap().read_sctp().unwrap().is_some() {}
    assert_eq!(AckState::Immediate, r.ack_state);
    assert_eq!(vec![(103, 4 * MSG as u32)], sacks_sent(&mut r, now));

    // Nothing more to say until something changes.
    assert!(sacks_sent(&mut r, now).is_empty());
}

#[test]
fn dropped_window_probe_is_retransmitted_when_the_window_reopens() -> Result<()> {
    let now = Instant::now();
    let mut s = established(1024 * 1024);
    s.rwnd = 0; // the peer's last SACK advertised a zero window
    let ppi = PayloadProtocolIdentifier::Binary;
    let mut stream = s.open_stream(1, ppi)?;
    for _ in 0..3 {
        stream.write_sctp(now, &Bytes::from(vec![0xcd; MSG]), ppi)?;
    }

    // RFC 4960 sec 6.1 rule A: with rwnd = 0 one DATA chunk may still be in flight, the probe.
    let probe = data_tsns_sent(&mut s, now);
    assert_eq!(1, probe.len());
    let p = probe[0];

    // The receiver drops it (window still zero) and says so: still closed, nothing to send.
    let sack = |a_rwnd| ChunkSelectiveAck {
        cumulative_tsn_ack: p - 1,
        advertised_receiver_window_credit: a_rwnd,
        ..Default::default()
    };
    s.handle_sack(&sack(0), now)?;
    assert!(data_tsns_sent(&mut s, now).is_empty());

    // The window reopens without the probe being acknowledged: it was dropped. It is resent
    // at once, ahead of the new DATA, instead of leaving a hole that only the T3-rtx timer
    // (RTO >= 1 s) would fill.
    s.handle_sack(&sack(64 * 1024), now)?;
    assert_eq!(vec![p, p + 1, p + 2], data_tsns_sent(&mut s, now));
    assert_eq!(0, s.stats.get_num_t3timeouts());
    Ok(())
}

#[test]
fn acknowledged_window_probe_is_not_retransmitted() -> Result<()> {
    let now = Instant::now();
    let mut s = established(1024 * 1024);
    s.rwnd = 0;
    let ppi = PayloadProtocolIdentifier::Binary;
    let mut stream = s.open_stream(1, ppi)?;
    for _ in 0..2 {
        stream.write_sctp(now, &Bytes::from(vec![0xcd; MSG]), ppi)?;
    }
    let p = data_tsns_sent(&mut s, now)[0];

    // The receiver accepted the probe: the reopening SACK acknowledges it.
    s.handle_sack(
        &ChunkSelectiveAck {
            cumulative_tsn_ack: p,
            advertised_receiver_window_credit: 64 * 1024,
            ..Default::default()
        },
        now,
    )?;
    assert_eq!(vec![p + 1], data_tsns_sent(&mut s, now));
    Ok(())
}
