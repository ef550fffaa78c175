//! A pickle virtual machine just large enough for `torch.save` files.
//!
//! It understands the containers a checkpoint is made of (dicts, OrderedDicts, lists,
//! tuples, scalars, strings) and the tensor reconstruction calls (`_rebuild_tensor_v2`,
//! `_rebuild_parameter`). Everything else — `argparse.Namespace` args, optimizer state,
//! numpy scalars — becomes an opaque value, so a training checkpoint loads without
//! executing or even knowing its classes. Nothing is ever imported or called.

use std::cell::RefCell;
use std::rc::Rc;

use super::opcodes as op;
pub use super::value::{StorageRef, TensorRef, Value};

/// Runs the pickle program `data`; storages are resolved through `persistent_load`.
pub fn load(data: &[u8]) -> Result<Value, String> {
    Vm {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
    }
    .run()
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
}

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> Result<usize, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated pickle")?;
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| "length overflow".into())
    }
    /// The length or index operand of `op`: 1 byte for the short forms, 4 or 8 otherwise.
    fn len(&mut self, op: u8) -> Result<usize, String> {
        match op {
            op::SHORT_BINUNICODE
            | op::SHORT_BINSTRING
            | op::SHORT_BINBYTES
            | op::BINPUT
            | op::BINGET => Ok(self.u8()? as usize),
            op::BINUNICODE8 | op::BINBYTES8 => self.u64(),
            _ => self.u32(),
        }
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }
    fn bytes(&mut self, n: usize) -> Result<Value, String> {
        Ok(Value::Bytes(self.take(n)?.to_vec()))
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".into())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("MARK missing")?;
        if m > self.stack.len() {
            return Err("corrupt MARK".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, i: usize) -> Result<(), String> {
        let v = self.top()?.clone();
        if i >= self.memo.len() {
            self.memo.resize(i + 1, None);
        }
        self.memo[i] = Some(v);
        Ok(())
    }
    fn memo_get(&mut self, i: usize) -> Result<(), String> {
        let v = self
            .memo
            .get(i)
            .cloned()
            .flatten()
            .ok_or("unknown memo entry")?;
        self.stack.push(v);
        Ok(())
    }
    fn tuple(v: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(v))
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            if op == op::STOP {
                return self.pop();
            }
            self.step(op)?;
        }
    }

    /// Framing, marks and the memo; anything else goes to [`Self::container`].
    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            op::PROTO => {
                self.u8()?;
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.top()?.clone();
                self.stack.push(v);
            }
            op::BINPUT | op::LONG_BINPUT => {
                let i = self.len(op)?;
                self.memo_put(i)?;
            }
            op::PUT => {
                let i = self.line()?.parse().map_err(|_| "bad PUT")?;
                self.memo_put(i)?;
            }
            op::MEMOIZE => {
                let i = self.memo.len();
                self.memo_put(i)?;
            }
            op::BINGET | op::LONG_BINGET => {
                let i = self.len(op)?;
                self.memo_get(i)?;
            }
            op::GET => {
                let i = self.line()?.parse().map_err(|_| "bad GET")?;
                self.memo_get(i)?;
            }
            _ => self.container(op)?,
        }
        Ok(())
    }

    /// Tuples, lists, dicts and (opaque) sets; anything else goes to [`Self::object`].
    fn container(&mut self, op: u8) -> Result<(), String> {
        match op {
            op::EMPTY_TUPLE => self.stack.push(Self::tuple(vec![])),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.stack.push(Self::tuple(items));
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(op - op::TUPLE1) + 1;
                if self.stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Self::tuple(items));
            }
            op::EMPTY_LIST => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))),
            op::LIST => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            op::EMPTY_DICT => self.stack.push(Value::dict()),
            op::DICT => {
                let items = self.pop_mark()?;
                let d = Value::dict();
                set_items(&d, items);
                self.stack.push(d);
            }
            op::EMPTY_SET => self.stack.push(Value::Opaque("set".into())),
            op::ADDITEMS => {
                self.pop_mark()?; // sets are opaque
            }
            op::FROZENSET => {
                self.pop_mark()?;
                self.stack.push(Value::Opaque("frozenset".into()));
            }
            op::APPEND => {
                let v = self.pop()?;
                if let Value::List(l) = self.top()? {
                    l.borrow_mut().push(v);
                }
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                if let Value::List(l) = self.top()? {
                    l.borrow_mut().extend(items);
                }
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?.clone();
                set_items(&d, vec![k, v]);
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let d = self.top()?.clone();
                set_items(&d, items);
            }
            _ => self.object(op)?,
        }
        Ok(())
    }

    /// Globals, calls and persistent ids (interpreted, never executed); anything else is
    /// a literal for [`Self::literal`].
    fn object(&mut self, op: u8) -> Result<(), String> {
        match op {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(format!("{module}.{name}")));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (m, n) = (module.as_str().unwrap_or("?"), name.as_str().unwrap_or("?"));
                self.stack.push(Value::Global(format!("{m}.{n}")));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let f = self.pop()?;
                self.stack.push(reduce(f, args)?);
            }
            op::NEWOBJ => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                self.stack.push(instantiate(&cls));
            }
            op::NEWOBJ_EX => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                self.stack.push(instantiate(&cls));
            }
            op::BUILD => {
                self.pop()?; // object state is not needed
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.stack.push(persistent_load(&pid)?);
            }
            _ => {
                let v = self.literal(op)?;
                self.stack.push(v);
            }
        }
        Ok(())
    }

    /// The value a scalar, string or bytes opcode reads from the stream; any other opcode
    /// is not supported.
    fn literal(&mut self, op: u8) -> Result<Value, String> {
        Ok(match op {
            op::NONE => Value::None,
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::BININT => Value::Int(self.u32()? as u32 as i32 as i64),
            op::BININT1 => Value::Int(self.u8()? as i64),
            op::BININT2 => Value::Int(self.u16()? as i64),
            op::LONG1 => {
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                if n > 8 {
                    Value::Opaque("long".into())
                } else {
                    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                    let mut buf = [if neg { 0xff } else { 0 }; 8];
                    buf[..n].copy_from_slice(&b);
                    Value::Int(i64::from_le_bytes(buf))
                }
            }
            op::INT => match self.line()?.as_str() {
                "00" => Value::Bool(false),
                "01" => Value::Bool(true),
                s => Value::Int(s.parse().map_err(|_| format!("bad INT {s}"))?),
            },
            op::LONG => {
                let l = self.line()?;
                let v = l.trim_end_matches('L').parse();
                Value::Int(v.map_err(|_| format!("bad LONG {l}"))?)
            }
            op::BINFLOAT => {
                let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated")?;
                Value::Float(f64::from_be_bytes(b))
            }
            op::FLOAT => {
                let l = self.line()?;
                Value::Float(l.parse().map_err(|_| format!("bad FLOAT {l}"))?)
            }
            op::BINUNICODE
            | op::BINSTRING
            | op::SHORT_BINUNICODE
            | op::SHORT_BINSTRING
            | op::BINUNICODE8 => {
                let n = self.len(op)?;
                self.string(n)?
            }
            op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 => {
                let n = self.len(op)?;
                self.bytes(n)?
            }
            op::UNICODE | op::STRING => Value::Str(self.line()?),
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        })
    }
}

fn set_items(d: &Value, items: Vec<Value>) {
    if let Value::Dict(map) = d {
        let mut map = map.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.push((k, v));
        }
    }
}

fn instantiate(cls: &Value) -> Value {
    match cls {
        Value::Global(g) if g == "collections.OrderedDict" || g == "builtins.dict" => Value::dict(),
        Value::Global(g) => Value::Opaque(g.clone()),
        _ => Value::Opaque("?".into()),
    }
}

/// `callable(*args)` for the callables a checkpoint's tensors need; others are opaque.
fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = &f else {
        return Ok(Value::Opaque("?".into()));
    };
    let args = match args {
        Value::Tuple(t) => t,
        _ => return Ok(Value::Opaque(name.clone())),
    };
    match name.as_str() {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let bad = || format!("malformed {name} call");
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => return Err(bad()),
            };
            let offset = args.get(1).and_then(Value::as_usize).ok_or_else(bad)?;
            let shape = args.get(2).and_then(Value::usizes).ok_or_else(bad)?;
            let stride = args.get(3).and_then(Value::usizes).ok_or_else(bad)?;
            if shape.len() != stride.len() {
                return Err(bad());
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                shape,
                stride,
            })))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            Ok(args.first().cloned().unwrap_or(Value::None))
        }
        "collections.OrderedDict" | "builtins.dict" => Ok(Value::dict()),
        _ => Ok(Value::Opaque(name.clone())),
    }
}

/// `('storage', <class>, key, location, numel)` as torch writes it.
fn persistent_load(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match (
        t.first().and_then(Value::as_str),
        t.get(1),
        t.get(2).and_then(Value::as_str),
    ) {
        (Some("storage"), Some(Value::Global(cls)), Some(key)) => Ok(Value::Storage(StorageRef {
            key: key.to_string(),
            kind: cls.rsplit('.').next().unwrap_or(cls).to_string(),
        })),
        _ => Err("unsupported persistent id (not a torch storage)".into()),
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn truncated_input_is_an_error() {
        assert!(load(&[0x80, 2, b'X', 5, 0]).is_err());
        assert!(load(&[0x80, 2, 0xff]).unwrap_err().contains("opcode"));
    }
}
