//! The pickle VM on hand-written programs: real checkpoint shapes and hostile ones.

use super::*;

#[test]
fn reads_a_state_dict_and_skips_foreign_objects() {
    // {'w': _rebuild_tensor_v2(storage('0', FloatStorage), 0, (2, 3), (3, 1), False,
    //  OrderedDict()), 'args': argparse.Namespace(lr=0.5)} written by hand in protocol 2.
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    p.extend(b"X\x01\x00\x00\x00w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
    p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtR");
    p.extend(b"X\x04\x00\x00\x00argscargparse\nNamespace\n)\x81}X\x02\x00\x00\x00lrG?\xe0\x00\x00\x00\x00\x00\x00sbu.");
    let v = load(&p).unwrap();
    let Value::Dict(d) = v else {
        panic!("not a dict")
    };
    let d = d.borrow();
    assert_eq!(d.len(), 2);
    let Value::Tensor(t) = &d[0].1 else {
        panic!("not a tensor")
    };
    assert_eq!(
        (t.shape.clone(), t.stride.clone()),
        (vec![2, 3], vec![3, 1])
    );
    assert_eq!(
        t.storage,
        StorageRef {
            key: "0".into(),
            kind: "FloatStorage".into()
        }
    );
    assert!(matches!(&d[1].1, Value::Opaque(n) if n == "argparse.Namespace"));
}

/// `PROTO 2`, `body`, `STOP`.
fn program(body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(body);
    p.push(b'.');
    p
}

#[test]
fn a_huge_memo_index_costs_one_entry() {
    // EMPTY_LIST, LONG_BINPUT 0xffffffff, LONG_BINGET 0xffffffff, POP.
    let v = load(&program(b"]r\xff\xff\xff\xffj\xff\xff\xff\xff0")).unwrap();
    assert!(matches!(v, Value::List(_)));
}

#[test]
fn repeated_copies_of_a_string_are_budgeted() {
    let n = 3 << 20;
    let mut body = vec![b'B'];
    body.extend((n as u32).to_le_bytes());
    body.extend(std::iter::repeat_n(b'x', n));
    body.extend(b"q\x00");
    for _ in 0..20 {
        body.extend(b"h\x00");
    }
    let e = load(&program(&body)).unwrap_err();
    assert!(e.contains("copies"), "{e}");
    // A few copies of a short string are fine.
    assert!(load(&program(b"X\x03\x00\x00\x00cpuq\x00h\x00h\x000")).is_ok());
}

#[test]
fn nesting_is_capped() {
    let nest = |n: usize| {
        let mut body = vec![b']'];
        body.extend(std::iter::repeat_n(0x85, n)); // TUPLE1
        load(&program(&body))
    };
    assert!(nest(MAX_DEPTH - 1).is_ok());
    let e = nest(MAX_DEPTH).unwrap_err();
    assert!(e.contains("nested deeper"), "{e}");
    // The same through APPEND: [[[...]]]
    let mut body = vec![b']'];
    for _ in 0..MAX_DEPTH {
        body.extend(b"]");
    }
    body.extend(std::iter::repeat_n(b'a', MAX_DEPTH));
    assert!(load(&program(&body)).unwrap_err().contains("nested deeper"));
}

#[test]
fn self_reference_and_late_changes_are_refused() {
    // l = []; l.append(l)
    let e = load(&program(b"]q\x00h\x00a")).unwrap_err();
    assert!(e.contains("self-referencing"), "{e}");
    // a = []; b = [a]; a.append(b): a cycle through a container already inside b.
    let e = load(&program(b"]q\x00]h\x00aq\x01h\x00h\x01a")).unwrap_err();
    assert!(e.contains("self-referencing"), "{e}");
}

#[test]
fn shared_dicts_are_walked_once() {
    // d0 = {}; d(k+1) = {'x': dk, 'y': dk}: 2^40 paths, 41 dicts.
    let mut body = b"}q\x00".to_vec();
    for k in 0u8..40 {
        body.extend(b"}(X\x01\x00\x00\x00xh");
        body.push(k);
        body.extend(b"X\x01\x00\x00\x00yh");
        body.push(k);
        body.extend(b"uq");
        body.push(k + 1);
    }
    let v = load(&program(&body)).unwrap();
    assert!(super::super::tensors_in(&v).is_empty());
}

#[test]
fn truncated_input_is_an_error() {
    assert!(load(&[0x80, 2, b'X', 5, 0]).is_err());
    assert!(load(&[0x80, 2, 0xff]).unwrap_err().contains("opcode"));
}
