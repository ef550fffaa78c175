//! The teacher is an exponential moving average of the student (official `train_one_epoch`:
//! `param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)` for every parameter pair,
//! `m` from the momentum schedule). There is no gradient through the teacher.
//!
//! [`EmaPairs`] does it tensor by tensor. [`FlatEma`] runs it over the teacher's and the
//! student's [`FlatBuffer`]s, so that the whole update is three kernels instead of three
//! per parameter; the element-wise arithmetic, hence the result, is identical.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::algo_error::AlgoError;
use crate::flat::FlatBuffer;

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

/// The EMA over two [`FlatBuffer`]s laid out in [`FlatBuffer::order_key`] order: the same
/// arithmetic as [`EmaPairs::update`] in three kernels. Each update first checks (without
/// synchronising) that every tensor still lives in its buffer. The student's buffer is the
/// one AdamW runs over ([`crate::optim::Optimizer::use_flat_buffer`]).
#[derive(Debug)]
pub struct FlatEma {
    teacher: FlatBuffer,
    student: FlatBuffer,
}

impl FlatEma {
    pub fn new(pairs: EmaPairs) -> Result<Self, AlgoError> {
        let EmaPairs {
            names,
            teacher,
            student,
        } = pairs;
        let mut order: Vec<usize> = (0..names.len()).collect();
        // Stable: ties stay in name order.
        order.sort_by_key(|&i| FlatBuffer::order_key(&names[i], &student[i]));
        let pick = |v: &[Tensor]| -> Vec<(String, Tensor)> {
            order
                .iter()
                .map(|&i| (names[i].clone(), v[i].shallow_clone()))
                .collect()
        };
        Ok(Self {
            teacher: FlatBuffer::new(pick(&teacher))?,
            student: FlatBuffer::new(pick(&student))?,
        })
    }

    /// The teacher's buffer (every teacher tensor is a view of it).
    pub fn teacher(&self) -> &FlatBuffer {
        &self.teacher
    }

    /// The student's buffer (every student tensor is a view of it).
    pub fn student(&self) -> &FlatBuffer {
        &self.student
    }

    /// One EMA step with momentum `m` on the whole network.
    pub fn update(&self, m: f64) -> Result<(), AlgoError> {
        self.teacher.check_views()?;
        self.student.check_views()?;
        ema_update_(self.teacher.buffer(), self.student.buffer(), m)
    }
}
