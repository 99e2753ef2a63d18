//! Dequantization of stored rows on the CPU: each head of each cell decoded to the vector that
//! attention scores and weighs — x̂ = s·Πᵀ·c[idx] (+ the QJL term of PROD keys; split key rows
//! decoded part by part into the channel order of the layer), plus the layer's centering mean.

use crate::codec::request::{DequantRequest, KvPart};
use crate::codec::{KvCodec, Means};
use crate::math::quantizer::Scratch;

/// Decode cells `cells` of `req` into its output; `order` is the layer's key channel order where its
/// key rows are split (`split_key_order`: the caller has refused the call if there is none yet).
///
/// # Safety
/// The request's store holds n_cells rows and its output covers them (host memory); `cells` ⊂
/// 0..n_cells; concurrent calls take disjoint ranges.
pub unsafe fn dequantize_range(codec: &KvCodec, req: &DequantRequest, order: Option<&[u16]>, cells: std::ops::Range<usize>) {
    let lc = &codec.layers[req.layer];
    let (n_kv, d) = (codec.config.n_kv_heads, codec.config.head_dim);
    let means: Option<&Means> = codec.means(req.layer);
    let (layout, row_bytes) = match req.part {
        KvPart::Keys => (&lc.k_layout, lc.k_layout.row_bytes()),
        KvPart::Values => (&lc.v_layout, lc.v_layout.row_bytes()),
    };
    let mean_of = |g: usize| -> Option<&[f32]> {
        means.map(|m| match req.part {
            KvPart::Keys => &m.k[g * d..(g + 1) * d],
            KvPart::Values => &m.v[g * d..(g + 1) * d],
        })
    };
    let mut scratch = Scratch::new(d);
    let mut part_scratch = lc.outliers.as_ref().map(|ok| crate::codec::outliers::PartScratch::new(d, ok.channels));
    let mut head_codes = vec![0u8; layout.code_bytes() + layout.sign_bytes()];
    let mut out = vec![0.0f32; d];
    for j in cells {
        // SAFETY: j < n_cells and the store holds n_cells rows of row_bytes.
        let row = unsafe { std::slice::from_raw_parts(req.store.add(j * row_bytes), row_bytes) };
        for g in 0..n_kv {
            let scale_at = |off: usize| u16::from_le_bytes([row[off], row[off + 1]]);
            let codes = &row[layout.codes_offset(g)..layout.codes_offset(g) + layout.code_bytes()];
            match (req.part, lc.outliers.as_ref().zip(order)) {
                (KvPart::Keys, Some((ok, order))) => {
                    let scales = [scale_at(layout.scale_offset(g)), scale_at(layout.second_scale_offset(g))];
                    ok.decode(&order[g * d..(g + 1) * d], codes, scales, &mut out, part_scratch.as_mut().expect("made with outliers"));
                }
                (KvPart::Keys, None) => {
                    let (cb, sb) = (layout.code_bytes(), layout.sign_bytes());
                    head_codes[..cb].copy_from_slice(codes);
                    if sb > 0 {
                        head_codes[cb..cb + sb].copy_from_slice(&row[layout.signs_offset(g)..layout.signs_offset(g) + sb]);
                    }
                    let scales = if layout.qjl {
                        [scale_at(layout.scale_offset(g)), scale_at(layout.gamma_offset(g))]
                    } else {
                        [scale_at(layout.scale_offset(g)), 0]
                    };
                    lc.key.dequantize_one(&head_codes[..cb + sb], &scales, &mut out, &mut scratch);
                }
                (KvPart::Values, _) => lc.value.decode(codes, scale_at(layout.scale_offset(g)), &mut out, &mut scratch),
            }
            if let Some(mu) = mean_of(g) {
                out.iter_mut().zip(mu).for_each(|(x, m)| *x += m);
            }
            // SAFETY: (j, g) lies inside the validated output tensor.
            unsafe { req.out_dtype.store(&out, req.out.add(req.out_strides.offset(j, g))) };
        }
    }
}
