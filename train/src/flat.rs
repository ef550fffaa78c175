//! One contiguous buffer per network, owned here and shared by the teacher EMA and AdamW.
//!
//! The student's and the teacher's tensors are moved into one 1-D buffer each (every
//! tensor becomes a view of it, like assigning `p.data` in PyTorch), so that the EMA is
//! three kernels over the whole network and AdamW a few per segment instead of some ten per
//! parameter. Both need the same three facts, kept only here: the order of the tensors in
//! the buffer ([`FlatBuffer::order_key`]), each tensor's offset, and the check that every
//! tensor still lives there ([`FlatBuffer::check_views`]) — code that replaces a tensor's
//! storage (`set_data`, a dtype change) would otherwise silently detach it from the
//! updates.

use tch::Tensor;

use crate::algo_error::AlgoError;
use crate::clip::is_last_layer;
use crate::optim::is_regularized;

/// Named tensors laid out in one buffer (a shallow handle: clones share the storage).
#[derive(Debug)]
pub struct FlatBuffer {
    buffer: Tensor,
    names: Vec<String>,
    views: Vec<Tensor>,
    /// Element offset of each view, in buffer order.
    offsets: Vec<i64>,
}

impl Clone for FlatBuffer {
    fn clone(&self) -> Self {
        Self {
            buffer: self.buffer.shallow_clone(),
            names: self.names.clone(),
            views: self.views.iter().map(Tensor::shallow_clone).collect(),
            offsets: self.offsets.clone(),
        }
    }
}

impl FlatBuffer {
    /// The order that makes every AdamW segment contiguous (sort by it, then by name):
    /// trainable before frozen, the head's last layer after the rest, weight-decayed first.
    /// Parameters that always step together are then neighbours in the buffer.
    pub fn order_key(name: &str, t: &Tensor) -> (bool, bool, bool) {
        (
            !t.requires_grad(),
            is_last_layer(name),
            !is_regularized(name, &t.size()),
        )
    }

    /// Moves `tensors` (same dtype and device) into one new buffer, in the order given, and
    /// makes each a view of it: values, shapes, names and autograd leaves are unchanged,
    /// only the storage is shared.
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self, AlgoError> {
        let (names, tensors): (Vec<String>, Vec<Tensor>) = tensors.into_iter().unzip();
        let first = tensors
            .first()
            .ok_or_else(|| AlgoError::param("flat buffer", "no tensors"))?;
        let (kind, device) = (first.kind(), first.device());
        if let Some(i) = tensors
            .iter()
            .position(|t| t.kind() != kind || t.device() != device)
        {
            return Err(AlgoError::param(
                &names[i],
                "differs from the other tensors of the flat buffer in dtype or device",
            ));
        }
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut total = 0i64;
        for t in &tensors {
            offsets.push(total);
            total += t.numel() as i64;
        }
        let buffer = tch::no_grad(|| -> Result<Tensor, AlgoError> {
            let buffer = Tensor::f_empty([total], (kind, device))?;
            for (t, &offset) in tensors.iter().zip(&offsets) {
                let mut view = buffer
                    .f_narrow(0, offset, t.numel() as i64)?
                    .f_view(t.size().as_slice())?;
                view.f_copy_(t)?;
                t.shallow_clone().f_set_data(&view)?;
            }
            Ok(buffer)
        })?;
        Ok(Self {
            buffer,
            names,
            views: tensors,
            offsets,
        })
    }

    /// The 1-D buffer every tensor is a view of.
    pub fn buffer(&self) -> &Tensor {
        &self.buffer
    }

    /// The tensors' names, in buffer order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The element offset of `t` when it is a contiguous view of this buffer, in place.
    pub fn offset_of(&self, t: &Tensor) -> Option<i64> {
        let b = &self.buffer;
        if t.kind() != b.kind() || t.device() != b.device() || !t.is_contiguous() {
            return None;
        }
        let elt = b.kind().elt_size_in_bytes() as i64;
        let bytes = t.data_ptr() as i64 - b.data_ptr() as i64;
        let (offset, fits) = (bytes / elt, bytes >= 0 && bytes % elt == 0);
        (fits && offset + t.numel() as i64 <= b.numel() as i64).then_some(offset)
    }

    /// `[offset, offset + t.numel())` of `other` (a buffer of this one's length, e.g. an
    /// optimizer moment) shaped like `t`.
    pub fn view_of(&self, other: &Tensor, offset: i64, t: &Tensor) -> Result<Tensor, AlgoError> {
        Ok(other
            .f_narrow(0, offset, t.numel() as i64)?
            .f_view(t.size().as_slice())?)
    }

    /// Every tensor must still live at its offset (no device synchronisation).
    pub fn check_views(&self) -> Result<(), AlgoError> {
        self.check_at(
            self.names
                .iter()
                .zip(&self.views)
                .zip(&self.offsets)
                .map(|((n, t), &o)| (n.as_str(), t, o)),
        )
    }

    /// Each `(name, tensor, offset)` must still be a view of this buffer at `offset`: the
    /// one check behind the EMA's and the optimizer's updates.
    pub fn check_at<'a>(
        &self,
        tensors: impl IntoIterator<Item = (&'a str, &'a Tensor, i64)>,
    ) -> Result<(), AlgoError> {
        for (name, t, offset) in tensors {
            if self.offset_of(t) != Some(offset) {
                return Err(AlgoError::param(
                    name,
                    "no longer stored in its flat buffer (its storage was replaced)",
                ));
            }
        }
        Ok(())
    }
}
