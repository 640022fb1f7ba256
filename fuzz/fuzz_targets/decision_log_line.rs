//! A decision-log line with fuzzed content, as `stepgate replay` reads it:
//! read whole, or read by the decision fast path; both agree on what is a
//! decision, and neither panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepgate::record::line::{self, Line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let whole = line::read(text);
    let fast = line::read_decision(text);
    match (&whole, &fast) {
        (Ok(Line::Decision(decision)), Ok(Some(read))) => {
            assert_eq!(read, decision.as_ref(), "both reads of one decision agree");
        }
        (Ok(Line::Decision(_)), other) => {
            panic!("the fast path did not read a decision the whole read did: {other:?}")
        }
        (_, Ok(Some(_))) => {
            panic!("the fast path read a decision the whole read did not: {whole:?}")
        }
        _ => {}
    }
});
