//! The teacher is an exponential moving average of the student (official `train_one_epoch`:
//! `param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)` for every parameter pair,
//! `m` from the momentum schedule). There is no gradient through the teacher.
//!
//! [`EmaPairs`] does it tensor by tensor. [`FlatEma`] first gathers the teacher's and the
//! student's tensors into one contiguous buffer each (the tensors become views into it), so
//! that the whole update is three kernels instead of three per parameter; the element-wise
//! arithmetic, hence the result, is identical.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::algo_error::AlgoError;

/// `teacher = teacher * m + (1 - m) * student`, in place, in the official operation order.
pub fn ema_update_(teacher: &Tensor, student: &Tensor, m: f64) -> Result<(), AlgoError> {
    tch::no_grad(|| -> Result<(), AlgoError> {
        let mut t = teacher.shallow_clone();
        _ = t.f_mul_scalar_(m)?;
        _ = t.f_add_(&student.f_detach()?.f_mul_scalar(1.0 - m)?)?;
        Ok(())
    })
}

/// Teacher and student tensors matched by name.
#[derive(Debug)]
pub struct EmaPairs {
    names: Vec<String>,
    teacher: Vec<Tensor>,
    student: Vec<Tensor>,
}

impl EmaPairs {
    /// Matches `teacher` and `student` by name. Both must hold the same names, with equal
    /// shapes, dtypes and devices (teacher and student are the same architecture).
    pub fn new(
        teacher: impl IntoIterator<Item = (String, Tensor)>,
        student: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Self, AlgoError> {
        let mut student: BTreeMap<String, Tensor> = student.into_iter().collect();
        let teacher: BTreeMap<String, Tensor> = teacher.into_iter().collect();
        let mut pairs = Self {
            names: Vec::with_capacity(teacher.len()),
            teacher: Vec::with_capacity(teacher.len()),
            student: Vec::with_capacity(teacher.len()),
        };
        for (name, t) in teacher {
            let s = student
                .remove(&name)
                .ok_or_else(|| AlgoError::param(&name, "in the teacher but not in the student"))?;
            if t.size() != s.size() || t.kind() != s.kind() || t.device() != s.device() {
                return Err(AlgoError::param(
                    &name,
                    format!(
                        "teacher {:?} {:?} {:?} vs student {:?} {:?} {:?}",
                        t.size(),
                        t.kind(),
                        t.device(),
                        s.size(),
                        s.kind(),
                        s.device()
                    ),
                ));
            }
            pairs.names.push(name);
            pairs.teacher.push(t);
            pairs.student.push(s);
        }
        if let Some(name) = student.keys().next() {
            return Err(AlgoError::param(
                name,
                "in the student but not in the teacher",
            ));
        }
        Ok(pairs)
    }

    /// All variables of two var stores (the official loop zips all parameters, trainable or
    /// not).
    pub fn from_var_stores(
        teacher: &tch::nn::VarStore,
        student: &tch::nn::VarStore,
    ) -> Result<Self, AlgoError> {
        Self::new(teacher.variables(), student.variables())
    }

    /// The pairs reordered by `key` of the student's name and tensor (stable: ties stay in
    /// name order). The order is that of the flat buffers [`FlatEma`] builds; the optimizer
    /// wants its segments contiguous there (see [`crate::optim::flat_order_key`]).
    pub fn ordered_by<K: Ord>(self, key: impl Fn(&str, &Tensor) -> K) -> Self {
        let mut order: Vec<usize> = (0..self.names.len()).collect();
        order.sort_by_key(|&i| key(&self.names[i], &self.student[i]));
        let pick =
            |v: &[Tensor]| -> Vec<Tensor> { order.iter().map(|&i| v[i].shallow_clone()).collect() };
        Self {
            names: order.iter().map(|&i| self.names[i].clone()).collect(),
            teacher: pick(&self.teacher),
            student: pick(&self.student),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// One EMA step with momentum `m`, tensor by tensor.
    pub fn update(&self, m: f64) -> Result<(), AlgoError> {
        for (t, s) in self.teacher.iter().zip(&self.student) {
            ema_update_(t, s, m)?;
        }
        Ok(())
    }
}

/// Moves `tensors` (same dtype and device) into one new contiguous 1-D buffer, in order, and
/// makes each tensor a view into it (`set_data`, like assigning `p.data` in PyTorch): values,
/// shapes, names and autograd leaves are unchanged, only the storage is shared. Returns the
/// buffer.
pub fn share_one_buffer(tensors: &[Tensor]) -> Result<Tensor, AlgoError> {
    let first = tensors
        .first()
        .ok_or_else(|| AlgoError::param("flat buffer", "no tensors"))?;
    let (kind, device) = (first.kind(), first.device());
    if tensors
        .iter()
        .any(|t| t.kind() != kind || t.device() != device)
    {
        return Err(AlgoError::param(
            "flat buffer",
            "tensors differ in dtype or device",
        ));
    }
    let total: i64 = tensors.iter().map(|t| t.numel() as i64).sum();
    tch::no_grad(|| -> Result<Tensor, AlgoError> {
        let flat = Tensor::f_empty([total], (kind, device))?;
        let mut offset = 0;
        for t in tensors {
            let n = t.numel() as i64;
            let mut view = flat.f_narrow(0, offset, n)?.f_view(t.size().as_slice())?;
            view.f_copy_(t)?;
            let mut t = t.shallow_clone();
            t.f_set_data(&view)?;
            offset += n;
        }
        Ok(flat)
    })
}

/// The EMA over two flat buffers (see [`share_one_buffer`]): the same arithmetic as
/// [`EmaPairs::update`] in three kernels. Each update first checks (without synchronising)
/// that every tensor still lives in its buffer, since code that replaces a tensor's storage
/// (`set_data`, a dtype change) would silently detach it from the average.
#[derive(Debug)]
pub struct FlatEma {
    pairs: EmaPairs,
    teacher_flat: Tensor,
    student_flat: Tensor,
}

impl FlatEma {
    pub fn new(pairs: EmaPairs) -> Result<Self, AlgoError> {
        let teacher_flat = share_one_buffer(&pairs.teacher)?;
        let student_flat = share_one_buffer(&pairs.student)?;
        Ok(Self {
            pairs,
            teacher_flat,
            student_flat,
        })
    }

    pub fn pairs(&self) -> &EmaPairs {
        &self.pairs
    }

    /// The student's flat buffer (every student tensor is a view of it).
    pub fn student_flat(&self) -> &Tensor {
        &self.student_flat
    }

    /// One EMA step with momentum `m` on the whole network.
    pub fn update(&self, m: f64) -> Result<(), AlgoError> {
        check_views(&self.teacher_flat, &self.pairs.teacher, &self.pairs.names)?;
        check_views(&self.student_flat, &self.pairs.student, &self.pairs.names)?;
        ema_update_(&self.teacher_flat, &self.student_flat, m)
    }
}

fn check_views(flat: &Tensor, tensors: &[Tensor], names: &[String]) -> Result<(), AlgoError> {
    let elt = flat.kind().elt_size_in_bytes();
    let mut at = flat.data_ptr() as usize;
    for (t, name) in tensors.iter().zip(names) {
        if t.data_ptr() as usize != at || !t.is_contiguous() {
            return Err(AlgoError::param(
                name,
                "no longer stored in the flat EMA buffer (its storage was replaced); rebuild the FlatEma",
            ));
        }
        at += t.numel() * elt;
    }
    Ok(())
}
