//! AdamW over flat buffers. When the parameters already live in one contiguous buffer
//! (the student's [`FlatBuffer`], laid out by [`FlatBuffer::order_key`]),
//! the parameters that always step together form contiguous segments: (weight-decayed or
//! not) x (head's last layer or not). A step is then the update of [`adamw_update`] once per
//! segment, on the segment's range of the parameter buffer and of two flat moment buffers,
//! after one `cat` of its gradients: about a dozen kernels per segment (per cache-sized
//! chunk on CPU) instead of per
//! parameter. The arithmetic is element-wise with the same scalars, so the values are those
//! of the per-parameter path.
//!
//! Each parameter keeps its own step counter and its state is a view into the flat moments,
//! so a segment whose parameters do not all have a gradient, or do not share a step count,
//! simply falls back to the per-parameter update for that step; export and load see the
//! same per-parameter state either way.

use std::collections::BTreeMap;

use tch::{Device, Tensor};

use super::Slot;
use super::update::adamw_update;
use crate::algo_error::AlgoError;
use crate::clip::{CancelledGrads, is_last_layer};
use crate::flat::FlatBuffer;

/// Elements per update on CPU (512 KiB of f32): the dozen passes of an update then run in
/// cache, where whole segments would stream from memory each time (slower than the
/// per-parameter path on a ViT-Tiny head, which this matches or beats). On accelerators the
/// launch count is what matters, so a segment is one update.
const CPU_CHUNK: i64 = 1 << 17;

/// Parameters that step together, tiling `[start, start + len)` of the buffers.
#[derive(Debug)]
struct Segment {
    regularized: bool,
    start: i64,
    len: i64,
    /// Indices into the optimizer's slots, in buffer order.
    slots: Vec<usize>,
}

#[derive(Debug)]
pub(super) struct FlatAdamW {
    layout: FlatBuffer,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Element offset of each slot's parameter in the buffers, by slot index.
    offsets: Vec<i64>,
    segments: Vec<Segment>,
}

impl FlatAdamW {
    /// The flat layout of `slots` in `flat`, or `None` when some parameter is not a
    /// contiguous range of it or some segment is not contiguous (the caller then keeps the
    /// per-parameter path). The moment buffers start at zero.
    pub(super) fn new(flat: &FlatBuffer, slots: &[Slot]) -> Result<Option<Self>, AlgoError> {
        let offsets: Option<Vec<i64>> = slots.iter().map(|s| flat.offset_of(&s.param)).collect();
        let Some(offsets) = offsets.filter(|o| !o.is_empty()) else {
            return Ok(None);
        };
        let mut keyed: BTreeMap<(bool, bool), Vec<usize>> = BTreeMap::new();
        for (i, s) in slots.iter().enumerate() {
            keyed
                .entry((is_last_layer(&s.name), !s.regularized))
                .or_default()
                .push(i);
        }
        let mut segments = Vec::with_capacity(keyed.len());
        for ((_, not_regularized), mut idx) in keyed {
            idx.sort_by_key(|&i| offsets[i]);
            let start = offsets[idx[0]];
            let mut end = start;
            for &i in &idx {
                if offsets[i] != end {
                    return Ok(None);
                }
                end += slots[i].param.numel() as i64;
            }
            segments.push(Segment {
                regularized: !not_regularized,
                start,
                len: end - start,
                slots: idx,
            });
        }
        let mut ranges: Vec<(i64, i64)> = segments.iter().map(|s| (s.start, s.len)).collect();
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Ok(None);
        }
        Ok(Some(Self {
            layout: flat.clone(),
            exp_avg: flat.buffer().f_zeros_like()?,
            exp_avg_sq: flat.buffer().f_zeros_like()?,
            offsets,
            segments,
        }))
    }

    /// Slot `i`'s `[exp_avg, exp_avg_sq]` as views of the flat moments.
    fn views(&self, i: usize, param: &Tensor) -> Result<Vec<Tensor>, AlgoError> {
        [&self.exp_avg, &self.exp_avg_sq]
            .into_iter()
            .map(|t| self.layout.view_of(t, self.offsets[i], param))
            .collect()
    }

    /// Zeroes both moment buffers (before a load: parameters without state start fresh).
    pub(super) fn zero_state(&self) -> Result<(), AlgoError> {
        tch::no_grad(|| -> Result<(), AlgoError> {
            for t in [&self.exp_avg, &self.exp_avg_sq] {
                _ = t.shallow_clone().f_zero_()?;
            }
            Ok(())
        })
    }

    /// Copies `state` (`[exp_avg, exp_avg_sq]` of slot `i`) into the flat moments and
    /// returns the views that replace it.
    pub(super) fn adopt(
        &self,
        i: usize,
        param: &Tensor,
        state: &[Tensor],
    ) -> Result<Vec<Tensor>, AlgoError> {
        let views = self.views(i, param)?;
        if state.len() != views.len() {
            return Err(AlgoError::state("adamw", "expects exp_avg and exp_avg_sq"));
        }
        tch::no_grad(|| -> Result<(), AlgoError> {
            for (v, t) in views.iter().zip(state) {
                v.shallow_clone().f_copy_(t)?;
            }
            Ok(())
        })?;
        Ok(views)
    }

    /// One AdamW step (see [`super::Optimizer::step`]), by segment where it can.
    pub(super) fn step(
        &self,
        slots: &mut [Slot],
        cancelled: &CancelledGrads,
        lr: f64,
        wd: f64,
    ) -> Result<(), AlgoError> {
        self.layout.check_at(
            slots
                .iter()
                .zip(&self.offsets)
                .map(|(s, &o)| (s.name.as_str(), &s.param, o)),
        )?;
        for seg in &self.segments {
            let mut grads = Vec::with_capacity(seg.slots.len());
            for &i in &seg.slots {
                let s = &slots[i];
                if cancelled.contains(&s.name) {
                    continue;
                }
                let g = s.param.grad();
                if g.defined() {
                    grads.push((i, g));
                }
            }
            let Some(&(first, _)) = grads.first() else {
                continue;
            };
            let step = slots[first].step;
            let together =
                grads.len() == seg.slots.len() && seg.slots.iter().all(|&i| slots[i].step == step);
            let wd = if seg.regularized { wd } else { 0.0 };
            for &(i, _) in &grads {
                let s = &mut slots[i];
                if s.state.is_empty() {
                    // Never updated, or absent from a loaded state: its range is zero.
                    s.state = self.views(i, &s.param)?;
                }
                s.step += 1;
            }
            if together {
                let flat: Vec<Tensor> = grads
                    .iter()
                    .map(|(_, g)| g.f_reshape([-1]))
                    .collect::<Result<_, _>>()?;
                let g = match flat.as_slice() {
                    [one] => one.shallow_clone(),
                    _ => Tensor::f_cat(&flat, 0)?,
                };
                let params = self.layout.buffer();
                let chunk = match params.device() {
                    Device::Cpu => CPU_CHUNK,
                    _ => seg.len,
                };
                let mut at = 0;
                while at < seg.len {
                    let n = chunk.min(seg.len - at);
                    let mut p = params.f_narrow(0, seg.start + at, n)?;
                    let mut state = [
                        self.exp_avg.f_narrow(0, seg.start + at, n)?,
                        self.exp_avg_sq.f_narrow(0, seg.start + at, n)?,
                    ];
                    adamw_update(&mut p, &g.f_narrow(0, at, n)?, &mut state, step + 1, lr, wd)?;
                    at += n;
                }
            } else {
                for (i, g) in grads {
                    let s = &mut slots[i];
                    let mut p = s.param.shallow_clone();
                    adamw_update(&mut p, &g, &mut s.state, s.step, lr, wd)?;
                }
            }
        }
        Ok(())
    }
}
