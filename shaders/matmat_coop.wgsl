// Tiled dequantize-in-shader matrix × matrix on cooperative matrices (tensor cores):
// Y[t][row] = W[row] · X[t] for prompt batches, f16 inputs, f32 accumulation.
//
// A workgroup (8 subgroups of 32) computes a BM-row × 64-token tile (BM = 64 or 128). Per
// 32-wide step of K it dequantizes the BM × 32 weight tile and converts the 32 × 64 input
// tile to f16 in workgroup memory; subgroup s multiplies rows (BM/4)·(s % 4) .. +BM/4 with
// tokens 32·(s / 4) .. +32 as (BM/64)·2 products of 16 × 16 × 16 per 16 of K. The tile
// result goes through workgroup memory so the output modes of matvec.wgsl (store, residual
// add, SwiGLU) apply per element.
enable f16;
enable wgpu_cooperative_matrix;

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

const UPB: u32 = $UPBu;
// Row strides (elements) of the tiles: multiples of 8 f16 / 4 f32 (16 bytes), padded
// against bank conflicts.
const LDW: u32 = 40u;
const BM: u32 = $BMu;
const LDC: u32 = BM;

var<workgroup> Ws: array<f16, BM * LDW>;  // [BM rows][LDW]: W[row][k]
var<workgroup> Xs: array<f16, 2560>;      // [64 tokens][LDW]: X[t][k]
var<workgroup> Cs: array<f32, 64u * LDC>;  // [64 tokens][LDC]: Y[t][row]

$DEQ

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row_base = wg.x * BM;
    let tok_base = wg.y * 64u;
    let sg = lid / 32u;
    let rb = (sg % 4u) * (BM / 4u);
    let tb = (sg / 4u) * 32u;
$ACC_DECL
    for (var u = 0u; u < P.units; u++) {
        for (var h = 0u; h < BM / 32u; h++) {
            let p = lid + h * 256u;
            let wr = p / 8u;
            let j = p % 8u;
            let r = min(row_base + wr, P.rows - 1u);
            let gu = r * P.units + u;
            let w = vec4<f16>(deq4(gu / UPB, gu % UPB, j));
            let wo = wr * LDW + 4u * j;
            Ws[wo] = w.x;
            Ws[wo + 1u] = w.y;
            Ws[wo + 2u] = w.z;
            Ws[wo + 3u] = w.w;
        }
        for (var h = 0u; h < 2u; h++) {
            let p = lid + h * 256u;
            let xt = p / 8u;
            let j = p % 8u;
            let t = min(tok_base + xt, P.n_tok - 1u);
            let xv = vec4<f16>(X[P.x_off + t * P.ld_x + u * 8u + j]);
            let xo = xt * LDW + 4u * j;
            Xs[xo] = xv.x;
            Xs[xo + 1u] = xv.y;
            Xs[xo + 2u] = xv.z;
            Xs[xo + 3u] = xv.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk += 16u) {
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&Xs[tb * LDW + kk], LDW);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&Xs[(tb + 16u) * LDW + kk], LDW);
$ACC_MMA
        }
        workgroupBarrier();
    }
    // C[row][t] column-major = Cs[t][row].
$ACC_STORE
    workgroupBarrier();
    for (var i = 0u; i < BM / 4u; i++) {
        let idx = lid + i * 256u;
        let rr = idx % BM;
        let tt = idx / BM;
        let row = row_base + rr;
        let tok = tok_base + tt;
        if (row >= P.rows || tok >= P.n_tok) {
            continue;
        }
        let v = Cs[tt * LDC + rr];
        let orow = P.row0 + row;
        let o = P.y_off + tok * P.ld_y + orow;
        if (P.mode == 0u) {
            Y[o] = v;
        } else if (P.mode == 1u) {
            Y[o] = Y[o] + v;
        } else if (P.mode == 3u) {
            let gt = Y[o + P.pad0];
            Y[o] = gt / (1.0 + exp(-gt)) * v;
        } else if ((orow & 1u) == 0u) {
            let up = Cs[tt * LDC + rr + 1u];
            Y[P.y_off + tok * P.ld_y + orow / 2u] = v / (1.0 + exp(-v)) * up;
        }
    }
}
