//! A pickle virtual machine just large enough for `torch.save` files.
//!
//! It understands the containers a checkpoint is made of (dicts, OrderedDicts, lists,
//! tuples, scalars, strings) and the tensor reconstruction calls (`_rebuild_tensor_v2`,
//! `_rebuild_parameter`). Everything else — `argparse.Namespace` args, optimizer state,
//! numpy scalars — becomes an opaque value, so a training checkpoint loads without
//! executing or even knowing its classes. Nothing is ever imported or called.

use std::cell::RefCell;
use std::rc::Rc;

/// Where a tensor's bytes are: a storage entry of the archive, with its element type.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// The storage class name, e.g. `FloatStorage`.
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function reference, `module.name`.
    Global(String),
    Storage(StorageRef),
    Tensor(Rc<TensorRef>),
    /// An object of a class we do not interpret (named by its class).
    Opaque(String),
}

impl Value {
    fn dict() -> Self {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }

    fn usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

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
            0x8c | b'U' | b'C' | b'q' | b'h' => Ok(self.u8()? as usize),
            0x8d | 0x8e => self.u64(),
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
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as u32 as i32 as i64;
                    self.stack.push(Value::Int(v));
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    let n = self.u8()? as usize; // LONG1
                    let b = self.take(n)?.to_vec();
                    let v = if n > 8 {
                        Value::Opaque("long".into())
                    } else {
                        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                        let mut buf = [if neg { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(&b);
                        Value::Int(i64::from_le_bytes(buf))
                    };
                    self.stack.push(v);
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT {s}"))?),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let l = self.line()?;
                    let v = l
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| format!("bad LONG {l}"))?;
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated")?;
                    self.stack.push(Value::Float(f64::from_be_bytes(b)));
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Value::Float(
                        l.parse().map_err(|_| format!("bad FLOAT {l}"))?,
                    ));
                }
                b'X' | b'T' | 0x8c | b'U' | 0x8d => {
                    let n = self.len(op)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e => {
                    let n = self.len(op)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'V' | b'S' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l));
                }
                b')' => self.stack.push(Self::tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Self::tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Self::tuple(items));
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.stack.push(Value::dict()),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::dict();
                    set_items(&d, items);
                    self.stack.push(d);
                }
                0x8f => self.stack.push(Value::Opaque("set".into())),
                0x90 => {
                    self.pop_mark()?; // ADDITEMS: sets are opaque
                }
                0x91 => {
                    self.pop_mark()?;
                    self.stack.push(Value::Opaque("frozenset".into()));
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?.clone();
                    set_items(&d, vec![k, v]);
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?.clone();
                    set_items(&d, items);
                }
                b'q' | b'r' => {
                    let i = self.len(op)?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = self.line()?.parse().map_err(|_| "bad PUT")?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' | b'j' => {
                    let i = self.len(op)?;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let i = self.line()?.parse().map_err(|_| "bad GET")?;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (m, n) = (module.as_str().unwrap_or("?"), name.as_str().unwrap_or("?"));
                    self.stack.push(Value::Global(format!("{m}.{n}")));
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.stack.push(reduce(f, args)?);
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(instantiate(&cls));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(instantiate(&cls));
                }
                b'b' => {
                    self.pop()?; // BUILD: object state is not needed
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(&pid)?);
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
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
