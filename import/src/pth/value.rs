//! The values the pickle VM in [`super::pickle`] builds: Python's containers and scalars,
//! and the two things a checkpoint is read for, tensors and the storages behind them.
//! Containers are shared (`Rc`), as pickle's memo lets one object appear in many places.

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
    pub(crate) fn dict() -> Self {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }

    pub(crate) fn usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::as_usize).collect(),
            Value::List(l) => l.borrow().iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}
