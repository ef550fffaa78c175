//! A pickle virtual machine just large enough for `torch.save` files.
//!
//! It understands the containers a checkpoint is made of (dicts, OrderedDicts, lists,
//! tuples, scalars, strings) and the tensor reconstruction calls (`_rebuild_tensor_v2`,
//! `_rebuild_parameter`). Everything else — `argparse.Namespace` args, optimizer state,
//! numpy scalars — becomes an opaque value, so a training checkpoint loads without
//! executing or even knowing its classes. Nothing is ever imported or called.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::opcodes as op;
pub use super::value::{StorageRef, TensorRef, Value};

/// Deepest container nesting accepted. A checkpoint nests a few levels (checkpoint,
/// state dict, tensor arguments); the bound keeps every recursive walk and drop shallow.
pub const MAX_DEPTH: usize = 64;

/// Bytes that copies of strings may add (memo gets and `DUP` copy them), per byte of the
/// program, with a floor: torch files repeat short strings (`cpu`, storage keys) only.
const COPY_FACTOR: usize = 4;
const COPY_FLOOR: usize = 1 << 20;

/// Runs the pickle program `data`; storages are resolved through `persistent_load`.
///
/// Memory and time are bounded by the size of `data`: the memo holds at most one entry
/// per opcode, copied strings are budgeted, nesting is capped at [`MAX_DEPTH`], and a
/// container cannot be changed once it is inside another one, so no value is cyclic.
pub fn load(data: &[u8]) -> Result<Value, String> {
    Vm {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: HashMap::new(),
        copy_budget: data.len().saturating_mul(COPY_FACTOR).max(COPY_FLOOR),
    }
    .run()
}

/// What the VM knows of a container: its nesting depth and whether it has been put
/// inside another container (after which it is frozen).
#[derive(Clone, Copy, Default)]
struct Node {
    depth: usize,
    sealed: bool,
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<usize, Value>,
    /// Containers by address (their `Rc` allocation).
    nodes: HashMap<usize, Node>,
    copy_budget: usize,
}

/// The address identifying a container value, `None` for scalars and leaves.
fn address(v: &Value) -> Option<usize> {
    match v {
        Value::Tuple(t) => Some(Rc::as_ptr(t) as *const () as usize),
        Value::List(l) => Some(Rc::as_ptr(l) as *const () as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d) as *const () as usize),
        _ => None,
    }
}

/// Heap bytes a clone of `v` copies (containers and tensors are shared, not copied).
fn copied_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) | Value::Global(s) | Value::Opaque(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Storage(s) => s.key.len() + s.kind.len(),
        _ => 0,
    }
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
        let top = self.top()?.clone();
        let v = self.copy(top)?;
        self.memo.insert(i, v);
        Ok(())
    }
    fn memo_get(&mut self, i: usize) -> Result<(), String> {
        let v = self.memo.get(&i).cloned().ok_or("unknown memo entry")?;
        let v = self.copy(v)?;
        self.stack.push(v);
        Ok(())
    }
    /// Charges a copy of `v` to the copy budget.
    fn copy(&mut self, v: Value) -> Result<Value, String> {
        self.copy_budget = self
            .copy_budget
            .checked_sub(copied_bytes(&v))
            .ok_or("repeated copies of large strings exceed what a checkpoint holds")?;
        Ok(v)
    }
    fn depth(&self, v: &Value) -> usize {
        address(v).map_or(0, |a| self.nodes.get(&a).map_or(1, |n| n.depth))
    }
    /// The depth of a container of depth `at_least` after taking `items`, which are sealed.
    fn holding(&mut self, items: &[Value], at_least: usize) -> Result<usize, String> {
        let inner = items.iter().map(|v| self.depth(v)).max().unwrap_or(0);
        let depth = at_least.max(inner + 1);
        if depth > MAX_DEPTH {
            return Err(format!(
                "containers nested deeper than {MAX_DEPTH} levels (a checkpoint never is)"
            ));
        }
        for a in items.iter().filter_map(address) {
            self.nodes.entry(a).or_default().sealed = true;
        }
        Ok(depth)
    }
    /// Appends `items` to the list, or sets them as pairs in the dict, on top of the
    /// stack, once the change is checked; items of any other value are dropped.
    fn extend_top(&mut self, items: Vec<Value>) -> Result<(), String> {
        let target = self.top()?.clone();
        let Some(a) = address(&target).filter(|_| !matches!(target, Value::Tuple(_))) else {
            return Ok(());
        };
        let node = self.nodes.get(&a).copied().unwrap_or_default();
        if node.sealed || items.iter().any(|v| address(v) == Some(a)) {
            return Err("a container is changed after being put inside another one (a self-referencing object, which a checkpoint never holds)".into());
        }
        let depth = self.holding(&items, node.depth.max(1))?;
        let sealed = false;
        self.nodes.insert(a, Node { depth, sealed });
        match &target {
            Value::List(l) => l.borrow_mut().extend(items),
            _ => set_items(&target, items),
        }
        Ok(())
    }
    /// Pushes the container `make` builds from `items` (which it now holds).
    fn push_new(
        &mut self,
        items: Vec<Value>,
        make: impl FnOnce(Vec<Value>) -> Value,
    ) -> Result<(), String> {
        let depth = self.holding(&items, 1)?;
        let v = make(items);
        if let Some(a) = address(&v) {
            let sealed = false;
            self.nodes.insert(a, Node { depth, sealed });
        }
        self.stack.push(v);
        Ok(())
    }

    /// Pushes what a call made: a new (empty) dict, a tensor or an opaque value.
    fn push_made(&mut self, v: Value) -> Result<(), String> {
        if matches!(v, Value::Dict(_)) {
            self.push_new(vec![], |_| v)
        } else {
            self.stack.push(v);
            Ok(())
        }
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
                let top = self.top()?.clone();
                let v = self.copy(top)?;
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
            op::EMPTY_TUPLE => self.push_new(vec![], tuple)?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_new(items, tuple)?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(op - op::TUPLE1) + 1;
                if self.stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_new(items, tuple)?;
            }
            op::EMPTY_LIST => self.push_new(vec![], list)?,
            op::LIST => {
                let items = self.pop_mark()?;
                self.push_new(items, list)?;
            }
            op::EMPTY_DICT => self.push_new(vec![], dict)?,
            op::DICT => {
                let items = self.pop_mark()?;
                self.push_new(items, dict)?;
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
                self.extend_top(vec![v])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_top(items)?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_top(vec![k, v])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.extend_top(items)?;
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
                self.push_made(reduce(f, args)?)?;
            }
            op::NEWOBJ => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                self.push_made(instantiate(&cls))?;
            }
            op::NEWOBJ_EX => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                self.push_made(instantiate(&cls))?;
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

fn tuple(items: Vec<Value>) -> Value {
    Value::Tuple(Rc::new(items))
}

fn list(items: Vec<Value>) -> Value {
    Value::List(Rc::new(RefCell::new(items)))
}

fn dict(items: Vec<Value>) -> Value {
    let d = Value::dict();
    set_items(&d, items);
    d
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
            match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(format!("malformed {name} call")),
            }
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
mod tests;
