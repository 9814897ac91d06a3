// Dequantize-in-shader matrix × vector(s): Y[t][row] = sum_k W[row][k] * X[t][k].
//
// One workgroup = 8 rows × 32 threads; each thread walks the row's 32-weight units with a
// stride of 32 and keeps NT accumulators (NT = 1 for decode, 8 for prompt batches, so each
// dequantized weight is used NT times). Output modes: 0 store, 1 accumulate (residual add),
// 2 SwiGLU over interleaved (gate, up) row pairs: Y[t][row/2] = silu(gate) * up,
// 3 SwiGLU with the gate already stored pad0 elements further: Y = silu(Y[+pad0]) * up.

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
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> P: Params;

const TPR: u32 = 32u;
const RPW: u32 = 8u;
const NT: u32 = $NTu;
const UPB: u32 = $UPBu;

var<workgroup> res: array<f32, 64>;
$RED_DECL

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let rl = lid / TPR;
    let lane = lid % TPR;
    let r = wg.x * RPW + rl;
    let t0 = wg.y * NT;
    var acc: array<f32, NT>;
    for (var t = 0u; t < NT; t++) {
        acc[t] = 0.0;
    }
    var xt: array<u32, NT>;
    for (var t = 0u; t < NT; t++) {
        xt[t] = P.x_off + min(t0 + t, P.n_tok - 1u) * P.ld_x;
    }
    if (r < P.rows) {
        let ub = r * P.units;
        for (var u = lane; u < P.units; u += TPR) {
            let g = ub + u;
            let b = g / UPB;
            let sub = g % UPB;
            for (var j = 0u; j < 8u; j++) {
                let w = deq4(b, sub, j);
                for (var t = 0u; t < NT; t++) {
                    acc[t] += dot(w, X[xt[t] + u * 8u + j]);
                }
            }
        }
    }
$RED_BODY
    workgroupBarrier();
    if (lid < RPW * NT) {
        let rr = wg.x * RPW + lid / NT;
        let tok = t0 + lid % NT;
        if (rr < P.rows && tok < P.n_tok) {
            let v = res[lid];
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
                let up = res[lid + NT];
                Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * up;
            }
        }
    }
}
