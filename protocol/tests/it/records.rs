//! COBS record streams: round trips, torn tails, corrupt records.
use kiln_protocol::*;

fn stream(payloads: &[&[u8]]) -> Vec<u8> {
    payloads.iter().flat_map(|p| encode_record(p)).collect()
}

#[test]
fn round_trip_including_zero_bytes() {
    let big = vec![0u8; 1000];
    let payloads: Vec<&[u8]> = vec![b"a", &[0, 0, 1, 0], &big, b"\xff"];
    let bytes = stream(&payloads);
    let got: Vec<Vec<u8>> = RecordReader::new(&bytes).map(|r| r.unwrap()).collect();
    assert_eq!(got, payloads);
}

#[test]
fn torn_tail_is_dropped_at_every_cut() {
    let payloads: Vec<&[u8]> = vec![b"first", b"second record", b"\x00third\x00"];
    let bytes = stream(&payloads);
    let ends: Vec<usize> = payloads
        .iter()
        .scan(0, |acc, p| {
            *acc += encode_record(p).len();
            Some(*acc)
        })
        .collect();
    for cut in 0..=bytes.len() {
        let mut r = RecordReader::new(&bytes[..cut]);
        let got: Vec<Vec<u8>> = r.by_ref().map(|x| x.unwrap()).collect();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(got.len(), complete, "cut at {cut}");
        assert_eq!(r.consumed() + r.torn_tail(), cut);
        assert_eq!(
            r.consumed(),
            if complete == 0 { 0 } else { ends[complete - 1] }
        );
    }
}

#[test]
fn damaged_record_is_an_error_not_a_misread() {
    let bytes = stream(&[b"abc", b"defgh"]);
    // An empty record (two terminators in a row) is corrupt.
    let mut b = bytes.clone();
    b.insert(0, 0);
    assert!(RecordReader::new(&b).next().unwrap().is_err());
    // A COBS code byte pointing past the record is corrupt.
    let mut b = bytes.clone();
    b[0] = 0x7f;
    assert!(RecordReader::new(&b).next().unwrap().is_err());
}

#[test]
fn result_records_round_trip() {
    let recs = [
        ResultRecord::Batch(vec![1, 0, 2]),
        ResultRecord::Blob(vec![0; 10]),
    ];
    let mut bytes = BUNDLE_MAGIC.to_vec();
    for r in &recs {
        bytes.extend(r.encode());
    }
    let got: Vec<ResultRecord> = RecordReader::new(&bytes[8..])
        .map(|p| ResultRecord::decode(&p.unwrap()).unwrap())
        .collect();
    assert_eq!(got, recs);
}
