// Dequantize-in-shader matrix × vector(s): Y[t][row] = sum_k W[row][k] * X[t][k].
//
// One workgroup = 8 warps of 32 lanes, each warp NR rows; lanes walk the row in groups of
// 4 weights and keep NR × NT accumulators (NT = 1 for decode, 8 for prompt batches, so each
// dequantized weight is used NT times). Output modes: 0 store, 1 accumulate (residual add),
// 2 SwiGLU over interleaved (gate, up) row pairs: Y[t][row/2] = silu(gate) * up,
// 3 SwiGLU with the gate already stored pad0 elements further: Y = silu(Y[+pad0]) * up.
// Integer decode kernels (q8) read X as the activation rounding's int8 quants and per-32
// scales (X: array<vec4<u32>>, packed region at word ld_x, see src/gpu/actq.rs) or build them
// in their RMSNorm prologue, and use the types' `idot` (dot4I8Packed).

struct Params {
    rows: u32,
    units: u32,
    d_off: u32,
    x_off: u32,
    ld_x: u32,
    y_off: u32,
    ld_y: u32,
    n_tok: u32,
    mode: u32,
    row0: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<$XTY>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

const NR: u32 = $NRu;
// Rows per workgroup: 8 warps × NR, or NR when the whole workgroup splits one row group's
// K range (split-K decode layout).
const RPW: u32 = $RPWu;
const NT: u32 = $NTu;
const UPB: u32 = $UPBu;

var<workgroup> res: array<f32, RPW * NT>;
$RED_DECL
$NORM_DECL

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let warp = lid / 32u;
    let lane = lid % 32u;
    let rbase = wg.x * RPW + $WARP_ROWS;
    let t0 = wg.y * NT;
$NORM_PRO    // Lanes take consecutive groups of 4 weights, so X loads (and most weight loads) of a
    // warp are contiguous; each X vector is reused for NR rows and each weight for NT tokens.
    // The NR × NT accumulators are generated as scalars (no private arrays: a dynamically
    // indexed private array would live in slow local memory).
$BODY
    workgroupBarrier();
    for (var idx = lid; idx < RPW * NT; idx += 256u) {
        let rr = wg.x * RPW + idx / NT;
        let tok = t0 + idx % NT;
        if (rr < P.rows && tok < P.n_tok) {
            let v = res[idx];
            let orow = P.row0 + rr;
            if (P.mode == 0u) {
                Y[P.y_off + tok * P.ld_y + orow] = v;
            } else if (P.mode == 1u) {
                let o = P.y_off + tok * P.ld_y + orow;
                Y[o] = Y[o] + v;
            } else if (P.mode == 3u) {
                let o = P.y_off + tok * P.ld_y + orow;
                let g = Y[o + P.pad0];
                Y[o] = g / (1.0 + exp(-g)) * v;
            } else if ((orow & 1u) == 0u) {
                let up = res[idx + NT];
                Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * up;
            }
        }
    }
}
