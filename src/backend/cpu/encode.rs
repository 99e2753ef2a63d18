//! Encoding K/V head vectors into cache rows on the CPU.

use crate::codec::outliers::PartScratch;
use crate::codec::{KvCodec, Means};
use crate::math::quantizer::Scratch;
use crate::math::scale;

/// Working memory of one thread for encoding.
pub struct EncodeScratch {
    x: Vec<f32>,
    quant: Scratch,
    /// Split key rows only: the head vector in outlier order and the two instances' scratch.
    split: Option<(Vec<f32>, PartScratch)>,
    codes: Vec<u8>,
    scales: [u16; 2],
}

impl EncodeScratch {
    pub fn new(codec: &KvCodec) -> Self {
        let d = codec.config.head_dim;
        let c = codec.config.key_outliers;
        let split = (c > 0).then(|| (vec![0.0; d], PartScratch::new(d, c)));
        Self { x: vec![0.0; d], quant: Scratch::new(d), split, codes: vec![0; 2 * d], scales: [0; 2] }
    }
}

pub use crate::codec::request::HeadTensor;

/// The centering means of a layer's first append of `n_tokens` rows (`KvCodec::estimate_means`).
///
/// # Safety
/// `k` and `v` cover tokens 0..n_tokens and heads 0..n_kv_heads.
pub unsafe fn first_append_means(codec: &KvCodec, k: &HeadTensor, v: &HeadTensor, n_tokens: usize) -> Means {
    codec.estimate_means(n_tokens, |which, tok, head, out| {
        let t = if which == 0 { k } else { v };
        // SAFETY: the caller guarantees the tensors cover tokens 0..n_tokens and every kv head, and
        // estimate_means asks only for those.
        unsafe { t.load(tok, head, out) }
    })
}

/// The key channel order of a layer's first append of `n_tokens` rows (`KvCodec::estimate_key_order`),
/// with the layer's frozen centering means.
///
/// # Safety
/// `k` covers tokens 0..n_tokens and heads 0..n_kv_heads.
pub unsafe fn first_append_order(codec: &KvCodec, k: &HeadTensor, n_tokens: usize, means: Option<&Means>) -> Vec<u16> {
    codec.estimate_key_order(n_tokens, means.map(|m| m.k.as_slice()), |tok, head, out| {
        // SAFETY: the caller guarantees the tensor covers tokens 0..n_tokens and every kv head.
        unsafe { k.load(tok, head, out) }
    })
}

/// Encode token `token` of `k` and `v` into the rows `k_row` and `v_row` of `layer` (`order`: the
/// layer's frozen key channel order, with `key_outliers`).
///
/// # Safety
/// The tensors cover `token` and every kv head.
pub unsafe fn encode_token(
    codec: &KvCodec,
    layer: usize,
    means: Option<&Means>,
    order: Option<&[u16]>,
    k: &HeadTensor,
    v: &HeadTensor,
    token: usize,
    k_row: &mut [u8],
    v_row: &mut [u8],
    s: &mut EncodeScratch,
) {
    let lc = &codec.layers[layer];
    let (kl, vl) = (&lc.k_layout, &lc.v_layout);
    let d = codec.config.head_dim;
    for head in 0..codec.config.n_kv_heads {
        // SAFETY: the caller guarantees the tensors cover `token` and every kv head.
        unsafe { k.load(token, head, &mut s.x) };
        if let Some(m) = means {
            s.x.iter_mut().zip(&m.k[head * d..(head + 1) * d]).for_each(|(x, mu)| *x -= mu);
        }
        if let (Some(ok), Some(order), Some((gathered, parts))) = (&lc.outliers, order, &mut s.split) {
            let codes = &mut k_row[kl.codes_offset(head)..kl.codes_offset(head) + kl.code_bytes()];
            ok.encode(&order[head * d..(head + 1) * d], &s.x, gathered, codes, &mut s.scales, parts);
            k_row[kl.scale_offset(head)..kl.scale_offset(head) + 2].copy_from_slice(&s.scales[0].to_le_bytes());
            let at = kl.second_scale_offset(head);
            k_row[at..at + 2].copy_from_slice(&s.scales[1].to_le_bytes());
        } else {
            assert!(lc.outliers.is_none(), "split key rows need the layer's key channel order");
            encode_key(lc, kl, head, k_row, s);
        }

        // SAFETY: as for k above.
        unsafe { v.load(token, head, &mut s.x) };
        if let Some(m) = means {
            s.x.iter_mut().zip(&m.v[head * d..(head + 1) * d]).for_each(|(x, mu)| *x -= mu);
        }
        let vb = vl.code_bytes();
        let off = vl.codes_offset(head);
        let sc = lc.value.encode(&s.x, &mut v_row[off..off + vb], &mut s.quant);
        v_row[vl.scale_offset(head)..vl.scale_offset(head) + 2].copy_from_slice(&sc.to_le_bytes());
    }
}

/// One head of a K row that is not split (MSE or PROD), from the centred vector in `s.x`.
fn encode_key(lc: &crate::codec::LayerCodec, kl: &crate::codec::RowLayout, head: usize, k_row: &mut [u8], s: &mut EncodeScratch) {
    let code_bytes = lc.key.code_bytes();
    lc.key.quantize_one(&s.x, &mut s.codes[..code_bytes], &mut s.scales[..lc.key.scale_count()], &mut s.quant);
    let mse_bytes = kl.code_bytes();
    k_row[kl.codes_offset(head)..kl.codes_offset(head) + mse_bytes].copy_from_slice(&s.codes[..mse_bytes]);
    if kl.qjl {
        let sb = kl.sign_bytes();
        k_row[kl.signs_offset(head)..kl.signs_offset(head) + sb].copy_from_slice(&s.codes[mse_bytes..mse_bytes + sb]);
        k_row[kl.gamma_offset(head)..kl.gamma_offset(head) + 2].copy_from_slice(&s.scales[1].to_le_bytes());
    }
    k_row[kl.scale_offset(head)..kl.scale_offset(head) + 2].copy_from_slice(&s.scales[0].to_le_bytes());
}

/// bf16 scale of a row's head (for tests and tools).
pub fn row_scale(row: &[u8], offset: usize) -> f32 {
    scale::decode(u16::from_le_bytes([row[offset], row[offset + 1]]))
}
